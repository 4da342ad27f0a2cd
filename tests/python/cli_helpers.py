"""The `dodo` command run in-process, for the CLI tests (test_output_safety.py, test_cli_robustness.py)."""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from dodo.cli import main

REPO = Path(__file__).resolve().parents[2]
#: Generous, a hang guard only: a tool's refusal answers in the time Python takes to start (and import torch).
TOOL_TIMEOUT_S = 300


def stand_in_venv(tmp_path: Path, dodo_script: str) -> Path:
    """A venv directory for the campaign scripts' DODO_VENV: `bin/dodo` runs ``dodo_script`` (bash),
    `bin/python` is this interpreter. Returns the venv's root."""
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "dodo").write_text(f"#!/bin/bash\n{dodo_script}\n")
    (venv / "dodo").chmod(0o755)
    (venv / "python").write_text(f"#!/bin/bash\nexec {sys.executable} \"$@\"\n")
    (venv / "python").chmod(0o755)
    return venv.parent


def run_tool(name: str, *args, cwd=REPO) -> subprocess.CompletedProcess:
    """Runs tools/NAME with ``args`` in a child interpreter (stdin closed), its output captured."""
    return subprocess.run([sys.executable, str(REPO / "tools" / name), *map(str, args)], capture_output=True,
                          text=True, timeout=TOOL_TIMEOUT_S, cwd=cwd, stdin=subprocess.DEVNULL)


def run(capsys, argv) -> tuple[int, str, str]:
    """`dodo ARGV` in-process: (exit code, stdout, stderr)."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def refused(capsys, argv, *names) -> str:
    """Assert `dodo ARGV` exits with 2 and one stderr line naming every one of ``names``."""
    code, _, err = run(capsys, argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for name in names:
        assert str(name) in lines[0], lines[0]
    return lines[0]


def digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def synthetic_preprocessed(root: Path, cells: int = 300) -> Path:
    """`dodo synth` of ``cells`` rows into ROOT/syn.h5, preprocessed into ROOT/pre.h5 (returned)."""
    assert main(["synth", str(root / "syn.h5"), "-n", str(cells), "-q"]) == 0
    (root / "pre.yaml").write_text(f"inputs: [{root / 'syn.h5'}]\noutput: {root / 'pre.h5'}\n")
    assert main(["preprocess", "--config", str(root / "pre.yaml"), "-q"]) == 0
    return root / "pre.h5"


def tiny_train_config(root: Path, table: Path, *, batch_size: int = 32, epochs: int = 1,
                      outputs: Path | None = None) -> Path:
    """ROOT/train.yaml: a `dodo train` config of an 8-wide one-block network on TABLE, writing its
    results and checkpoints under OUTPUTS (default ROOT) as res/ and ck/."""
    outputs = root if outputs is None else outputs
    config = root / "train.yaml"
    config.write_text(
        f"data: {{path: {table}, batch_size: {batch_size}}}\nmodel: {{head: equivariant, hidden_dim: 8, n_blocks: 1}}\n"
        f"training: {{epochs: {epochs}, lr: 1.0e-3, threads: 1, log_interval: 1000}}\n"
        f"output: {{results_dir: {outputs / 'res'}, checkpoint_dir: {outputs / 'ck'}}}\n")
    return config


def tiny_study_base(root: Path) -> Path:
    """ROOT/base.yaml: a one-epoch, 8-wide `dodo train` config on ROOT/pre.h5, for `dodo study` grids."""
    base = root / "base.yaml"
    base.write_text(
        f"data: {{path: {root / 'pre.h5'}, batch_size: 64}}\nmodel: {{head: equivariant, hidden_dim: 8, n_blocks: 1}}\n"
        "training: {epochs: 1, lr: 1.0e-3, threads: 1, log_interval: 1000}\n"
        f"output: {{results_dir: {root / 'unused'}, checkpoint_dir: {root / 'unused'}}}\n")
    return base


def emu_file(path, initial, final=None, **extra):
    """An Emu-layout HDF5 file at PATH: F4_initial, F4_final (the initial states unless given) and EXTRA datasets."""
    import h5py

    with h5py.File(path, "w") as handle:
        handle["F4_initial(1|ccm)"] = initial
        handle["F4_final(1|ccm)"] = initial if final is None else final
        for name, value in extra.items():
            handle[name] = value
    return path


def interrupt_linear_labels_at(monkeypatch, call: int):
    """Growth labels in chunks of two states, with Ctrl-C (KeyboardInterrupt) at the ``call``-th
    state's box set-up; returns the real box_setup, to put back for a resumed run."""
    from dodo.qke import growth_labels

    monkeypatch.setattr(growth_labels, "CHUNK", 2)
    calls = {"n": 0}
    real = growth_labels.box_setup

    def interrupting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(growth_labels, "box_setup", interrupting)
    return real


def interrupted_linear_only_run(capsys, monkeypatch, output, small_args) -> None:
    """`dodo simulate OUTPUT --random 4 --linear-only` stopped by Ctrl-C after its first chunk of
    two states (one line, exit 130): OUTPUT is left as its own unfinished checkpoint."""
    from dodo.qke import growth_labels

    real = interrupt_linear_labels_at(monkeypatch, 3)
    assert run(capsys, ["simulate", str(output), "--random", "4", "--linear-only", *small_args])[0] == 130
    monkeypatch.setattr(growth_labels, "box_setup", real)


def refused_then_replaced_with_overwrite(capsys, argv, target, reason) -> dict:
    """`dodo ARGV --json TARGET` refused in one line naming TARGET, ``reason`` and --overwrite, the
    file untouched; then replaced with --overwrite. Returns the report written."""
    import json

    before = digest(target)
    refused(capsys, [*argv, "--json", str(target)], target, reason, "--overwrite")
    assert digest(target) == before
    code, _, err = run(capsys, [*argv, "--json", str(target), "--overwrite"])
    assert code == 0, err
    return json.loads(Path(target).read_text())
