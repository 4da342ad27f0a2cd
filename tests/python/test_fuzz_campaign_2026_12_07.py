"""Fuzzing campaign 2026-12-07, round three (docs/reliability_cpp.md): the atheris target of the Python
API (fuzz/python/fuzz_python_api.py) had no coverage feedback from dodo. The editable install loads
dodo through its own loader, which atheris.instrument_imports() did not instrument, so the target saw
46 edges (none of them in dodo or in the target's input builder), libFuzzer kept one seed of the 24
that fuzz/make_seeds.py writes, and the campaign only mutated that one input."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TARGET = ROOT / "fuzz" / "python" / "fuzz_python_api.py"


def test_the_atheris_target_keeps_the_seeds_that_take_different_paths(make_seeds, tmp_path):
    pytest.importorskip("atheris")  # scripts/fuzz_smoke.sh installs it
    make_seeds.main([str(tmp_path / "seeds")])
    seeds = sorted((tmp_path / "seeds" / "python").iterdir())
    assert len(seeds) >= 20
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    # Only the seeds run (-runs = their number + libFuzzer's empty input): INITED reports what was kept.
    result = subprocess.run(
        [sys.executable, str(TARGET), f"-runs={len(seeds) + 1}", "-seed=1", f"-artifact_prefix={tmp_path}/crash-",
         str(corpus), str(tmp_path / "seeds" / "python")],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    inited = re.search(r"INITED cov: (\d+) ft: \d+ corp: (\d+)/", result.stderr)
    assert inited, result.stderr[-3000:]
    edges, kept = int(inited.group(1)), int(inited.group(2))
    # Before: "INITED cov: 46 ft: 46 corp: 1/102b"; with dodo instrumented, 326 edges and 16 seeds kept.
    assert kept >= len(seeds) // 3, (edges, kept)
    assert edges > 200, (edges, kept)
