"""Outside probe, round thirty-one (docs/reliability_python.md, section 34): the run-time side and
the CLI, probed as an independent tester would. Each test failed on the code before its fix (the
docstrings say what that code did)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cli_helpers import emu_file, refused

h5py = pytest.importorskip("h5py")


def _emu_states(count: int = 8) -> np.ndarray:
    """``count`` rest-frame states in Emu's layout [n, (x,y,z,t), (nu,nubar), flavour]: nu_e along +z,
    nubar_e along -z (an ELN crossing), heavy flavours isotropic."""
    F = np.zeros((count, 6, 4))
    F[:, :, 0] = 1.0
    F[:, 0, 3], F[:, 3, 3] = 0.5, -0.5
    F *= 1e32 * np.linspace(1.0, 2.0, count)[:, None, None]
    from dodo.conventions import to_emu_layout

    return to_emu_layout(F)


# --- an Emu file whose optional `directorynames` is a link that cannot be followed -----------------

@pytest.mark.parametrize("link", ["dangling", "external", "loop"])
def test_directorynames_that_cannot_be_opened_is_named_in_one_line(tmp_path, capsys, link):
    """`dodo apply` and `dodo preprocess` on an Emu file whose `directorynames` (the rows' names,
    optional) is a soft link to nothing, an external link into a missing file, or a soft-link loop:
    before, h5py's `KeyError: 'Unable to synchronously open object (component not found)'` traceback
    (the first two), or `dodo apply: error: Special link traversal failed (too many links)`, naming
    neither the file nor the dataset. Now the file's layout check refuses it, as it refuses such a
    `growthRate(1|s)`: `FILE: 'directorynames' cannot be opened (...; a broken or looping link?)`."""
    data = emu_file(tmp_path / "emu.h5", _emu_states())
    with h5py.File(data, "a") as handle:
        handle["directorynames"] = {"dangling": h5py.SoftLink("/nowhere"),
                                    "external": h5py.ExternalLink("missing.h5", "/names"),
                                    "loop": h5py.SoftLink("/directorynames")}[link]
    line = refused(capsys, ["apply", str(data), "--grid", "2x2x2", "-q"], data, "'directorynames' cannot be opened")
    assert "Traceback" not in line
    pytest.importorskip("yaml")
    config = tmp_path / "pre.yaml"
    config.write_text(f"inputs: [{data}]\noutput: {tmp_path / 'pre.h5'}\n")
    refused(capsys, ["preprocess", "--config", str(config), "-q"], data, "'directorynames' cannot be opened")
    assert not (tmp_path / "pre.h5").exists()
