"""What names a closure's model file: dodo.closure's cache key and an unpickled Closure's model_path.

Both were noted and left open in the reliability notes (session of 2026-12-02): the cache knew a
file by path, inode, size and modification time, so a rewrite of the same size whose modification
time was set back (os.utime) kept the old model; and a Closure made from a relative path and
unpickled in another directory reported that relative path, which named another file or none.
"""
from __future__ import annotations

import os
import pickle

import pytest


def test_cache_key_changes_when_a_same_size_rewrite_restores_the_modification_time(tmp_path):
    from dodo._closure import _file_identity

    path = tmp_path / "model.onnx"
    path.write_bytes(b"a" * 64)
    before = _file_identity(str(path))
    status = os.stat(path)
    with open(path, "r+b") as handle:  # in place: same inode, same size
        handle.write(b"b" * 64)
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (status.st_ino, status.st_size, status.st_mtime_ns)
    assert _file_identity(str(path)) != before


def test_unpickled_closure_names_the_file_it_loaded(tmp_path, monkeypatch):
    import shutil

    import dodo
    from dodo.models import default_model_path

    if not dodo.runtime_available():
        pytest.skip("closure runtime not built")
    made, elsewhere = tmp_path / "made", tmp_path / "elsewhere"
    made.mkdir(), elsewhere.mkdir()
    shutil.copy(default_model_path(), made / "model.onnx")
    monkeypatch.chdir(made)
    closure = dodo.Closure("model.onnx")
    assert closure.model_path == "model.onnx"  # as given, in the process that made it
    blob = pickle.dumps(closure)
    monkeypatch.chdir(elsewhere)
    restored = pickle.loads(blob)
    assert restored.model_path == str(made / "model.onnx")
    assert os.path.samefile(restored.model_path, made / "model.onnx")
    box3d_only = pickle.loads(pickle.dumps(dodo.Closure("box3d")))
    assert box3d_only.model_path is None
    absolute = pickle.loads(pickle.dumps(dodo.Closure(str(made / "model.onnx"))))
    assert absolute.model_path == str(made / "model.onnx")
