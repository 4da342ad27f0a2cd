"""Data-loss round thirteen's open item in dodo.training (docs/reliability_python.md, section 108):
train-ensemble's table and its recorded SHA-256 must be of one file."""
import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
pytest.importorskip("torch")
pytest.importorskip("h5py")

from cli_helpers import synthetic_preprocessed  # noqa: E402


def test_a_table_replaced_before_its_digest_is_refused_not_recorded_as_the_other(tmp_path, monkeypatch):
    """The digest was taken after the rows: a table replaced in between (a dodo preprocess finishing into
    the path) gave the rows of one file and the SHA-256 of the other, which dodo export writes into the
    model as dodo.training_data_sha256. Here the replacement lands just before the digest is taken."""
    from dodo.training import ensemble_train
    from dodo.training.readers import DataFileError

    table = synthetic_preprocessed(tmp_path, 40)
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = synthetic_preprocessed(other_dir, 60)
    digest = ensemble_train._file_sha256

    def replaced_then_digest(path):
        if not getattr(replaced_then_digest, "done", False):
            replaced_then_digest.done = True
            staged = Path(str(table) + ".new")
            shutil.copyfile(other, staged)
            os.replace(staged, table)
        return digest(path)

    monkeypatch.setattr(ensemble_train, "_file_sha256", replaced_then_digest)
    with pytest.raises(DataFileError, match="replaced or changed while it was read"):
        ensemble_train.load_table(str(table))
    loaded = ensemble_train.load_table(str(table))  # nothing replaces it now: read, and its own digest
    assert loaded["sha256"] == digest(str(table)) and len(loaded["sources"]) == 60
