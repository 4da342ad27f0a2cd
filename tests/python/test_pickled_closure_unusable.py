"""A pickled dodo.Closure whose model file was replaced, edited or emptied since: unpickling gives an
object whose every use raises the reason, so a multiprocessing Pool task raises it in the parent.
Raised at unpickling, it ended each Pool worker while it read its task, Pool started another, the task
was lost and Pool.map waited for ever (outside probe, Python round fifty)."""
import functools
import multiprocessing
import pickle
import shutil

import numpy as np
import pytest

import dodo
from dodo.models import MODELS_DIR, default_model_path


def work(closure, index):
    return float(closure(np.array([[[1.0, 0, 0, 0.1], [0.5, 0, 0, 0], [0.5, 0, 0, 0],
                                    [0.9, 0, 0, -0.2], [0.5, 0, 0, 0], [0.5, 0, 0, 0]]]))[0, 0, 0]) + index


@pytest.fixture
def package(tmp_path):
    path = tmp_path / "m.onnx"
    shutil.copy(default_model_path(), path)
    return path


@pytest.mark.parametrize("change", ["replaced", "emptied", "removed"])
def test_an_unpickled_closure_whose_model_changed_raises_at_first_use(package, change):
    blob = pickle.dumps(dodo.Closure(package, threads=1))
    if change == "replaced":
        shutil.copy(MODELS_DIR / "synthetic-test-equivariant.onnx", package)
    elif change == "emptied":
        package.write_bytes(b"")
    else:
        package.unlink()
    restored = pickle.loads(blob)
    expected = ValueError if change == "replaced" else (RuntimeError, OSError)
    for use in (lambda: restored.apply(np.zeros((1, 6, 4))), lambda: restored(np.zeros((1, 6, 4))),
                lambda: restored.metadata):
        with pytest.raises(expected, match="cannot unpickle or copy dodo.Closure"):
            use()
    again = pickle.loads(pickle.dumps(restored))  # still unusable, for the same reason
    with pytest.raises(expected, match="cannot unpickle or copy dodo.Closure"):
        again.apply(np.zeros((1, 6, 4)))
    assert "unusable dodo.Closure" in repr(restored)


def test_an_unchanged_model_still_unpickles_as_a_closure(package):
    closure = dodo.Closure(package, threads=1)
    restored = pickle.loads(pickle.dumps(closure))
    assert isinstance(restored, dodo.Closure) and restored.metadata == closure.metadata


def test_a_pool_task_with_a_closure_whose_model_changed_raises_in_the_parent(package):
    closure = dodo.Closure(package, threads=1)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.map(functools.partial(work, closure), [0])  # works first
    package.write_bytes(b"")
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        result = pool.map_async(functools.partial(work, closure), range(4))
        with pytest.raises(RuntimeError, match="cannot unpickle or copy dodo.Closure"):
            result.get(300)  # a hang guard, not a timing: before, no worker ever ran the tasks


def test_a_copy_of_a_closure_whose_model_is_gone_says_copy(package):
    """copy.copy and copy.deepcopy go through pickle's protocol: their failure named unpickling
    alone, which a user who copied never did (docs truth probe, round four)."""
    import copy

    closure = dodo.Closure(package, threads=1)
    package.unlink()
    for duplicate in (copy.copy(closure), copy.deepcopy(closure)):
        with pytest.raises((RuntimeError, OSError), match="cannot unpickle or copy dodo.Closure"):
            duplicate.apply(np.zeros((1, 6, 4)))
