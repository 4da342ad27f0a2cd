"""The `dodo` command run in-process, for the CLI tests (test_output_safety.py, test_cli_robustness.py)."""
from __future__ import annotations

import hashlib
from pathlib import Path

from dodo.cli import main


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
