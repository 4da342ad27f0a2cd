"""Outside probe, Python round fifty-eight: the open items of round fifty-seven (section 96): `dodo plot metrics`
of a file named twice, `dodo inspect`'s two notations of one slice; and the runtime from Python
(`dodo.Closure` / `dodo.closure` with array-likes, threads, processes, copies, `-X dev -W error`, `-O`)."""
from __future__ import annotations

import os

import pytest

from cli_helpers import run
from test_probe_round51 import _metrics
from test_probe_round54 import _labels_drawn
from test_probe_round57 import _preprocessed


# --- round fifty-seven's open items ---------------------------------------------------------------------


def test_plot_metrics_draws_a_file_named_twice_once_with_a_note(tmp_path, capsys, monkeypatch):
    """`dodo plot metrics m1.json m1.json` drew one run twice (`tmp/m1 [1]`, `tmp/m1 [2]`), where `dodo score`
    scores a file named twice once, with a note. Now drawn once, with a note; also through a symbolic link.
    Two files alike in name (run_000 of two studies) are still two runs."""
    pytest.importorskip("matplotlib")
    one = _metrics(tmp_path / "m1.json", [1.0, 0.5], [1.0, 0.6])
    link = tmp_path / "link.json"
    os.symlink(one, link)
    drawn = _labels_drawn(monkeypatch)
    code, out, err = run(capsys, ["plot", "metrics", str(one), str(one), str(link), "-o", str(tmp_path / "m.png")])
    assert code == 0, err
    assert len(drawn[-1]) == 1, drawn
    assert f"note: {one} named more than once (or through a link): each drawn once" in out, out
    other = tmp_path / "b"
    other.mkdir()
    two = _metrics(other / "m1.json", [1.0, 0.5], [1.0, 0.6])  # guard: another file of the same name
    code, out, err = run(capsys, ["plot", "metrics", str(one), str(two), "-o", str(tmp_path / "n.png")])
    assert code == 0 and len(drawn[-1]) == 2 and "note:" not in out, (out, drawn)


def test_inspect_writes_its_slice_as_its_empty_slice_error_does(tmp_path, capsys):
    """`dodo inspect` printed `slice [0, 30]` in its table and `slice [5:5]` in its empty slice's error:
    now `[start:stop]` in both (the JSON's `slice` stays a list of two numbers)."""
    yaml = pytest.importorskip("yaml")
    pytest.importorskip("torch")
    import json

    _preprocessed(capsys, tmp_path, n=30, seed=3)
    (tmp_path / "t.yaml").write_text(yaml.safe_dump({
        "data": {"path": str(tmp_path / "p.h5")},
        "model": {"hidden_dim": 8, "n_blocks": 1}, "training": {"epochs": 1, "threads": 1},
        "output": {"results_dir": str(tmp_path / "r"), "checkpoint_dir": str(tmp_path / "c")}}))
    code, out, err = run(capsys, ["train", "--config", str(tmp_path / "t.yaml")])
    assert code == 0, err
    best = str(tmp_path / "c" / "best.pt")
    code, out, err = run(capsys, ["inspect", best, "--start", "1", "--stop", "3", "--json", str(tmp_path / "i.json")])
    assert code == 0, err
    assert "2 cells, split 'val' slice [1:3]" in out.splitlines()[0], out
    assert json.loads((tmp_path / "i.json").read_text())["slice"] == [1, 3]
    code, out, err = run(capsys, ["inspect", best, "--start", "2", "--stop", "2"])
    assert code == 2 and "error: slice [2:2] of split 'val'" in err, err


# --- the runtime from Python -----------------------------------------------------------------------------


def _moving_cells(n: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    F = np.zeros((n, 6, 4))
    F[..., 0] = rng.uniform(0.2, 1.0, (n, 6))
    direction = rng.normal(size=(n, 6, 3))
    F[..., 1:] = direction / np.linalg.norm(direction, axis=-1, keepdims=True) * F[..., :1] * rng.uniform(0, 0.9, (n, 6, 1))
    return F


@pytest.mark.parametrize("name", ["bfloat16", "float8_e4m3fn", "int4"])
def test_extension_real_dtypes_of_ml_dtypes_are_computed_as_their_float64_values(name):
    """np.asarray of a JAX array in bfloat16 (ml_dtypes, which onnx installs): `ValueError: F_init must hold
    real numbers (any float or integer dtype); got dtype bfloat16` from dodo.box3d, Closure.apply,
    invariants, ..., which said the dtype was not a float; float8_e5m2 (kind "f") was taken. Now computed
    as the same values in float64, bit for bit; structured and raw void dtypes stay refused."""
    import numpy as np

    import dodo

    ml_dtypes = pytest.importorskip("ml_dtypes")
    dtype = getattr(ml_dtypes, name)
    given = (_moving_cells(20) * (8 if name == "int4" else 1)).astype(dtype)
    F = given.astype(np.float64)
    closure = dodo.Closure(threads=1)
    assert np.array_equal(closure.apply(given).F_pred, closure.apply(F).F_pred)
    assert np.array_equal(dodo.box3d(given).F_box, dodo.box3d(F).F_box)
    assert np.array_equal(dodo.invariants(given), dodo.invariants(F))
    at_rest = np.tile([1.0, 0.0, 0.0, 0.0], (20, 1))
    assert np.array_equal(dodo.box3d(F, at_rest.astype(dtype)).F_box, dodo.box3d(F).F_box)
    for refused in (np.dtype("V8"), np.dtype([("n", "f8")])):  # guard: still one line naming the dtype
        with pytest.raises(ValueError, match=r"must hold real numbers .*got dtype"):
            dodo.box3d(np.zeros((2, 6, 4), refused))


def test_a_bfloat16_four_velocity_is_refused_naming_its_rounding():
    """u = (W, W v) at v = 0.3 rounded to bfloat16 (8 bits): refused as a dtype that is not a float (above). Now
    bfloat16 is taken, and this u refused naming bfloat16's rounding as a float16 u is, not "pass u = (W, W v)"."""
    import numpy as np

    import dodo

    ml_dtypes = pytest.importorskip("ml_dtypes")
    W = 1 / np.sqrt(1 - 0.3 ** 2)
    u = np.tile([W, 0.3 * W, 0.0, 0.0], (4, 1)).astype(ml_dtypes.bfloat16)
    with pytest.raises(ValueError, match=r"u is bfloat16, whose rounding \(eps 0.0078\) alone gives .* give u as "
                                         r"float32 or float64"):
        dodo.box3d(_moving_cells(4), u)


def test_a_closure_whose_second_init_failed_is_still_the_closure_it_was():
    """`closure.__init__(other_model, ...)` that failed (here the default model with another Lebedev order:
    refused) left the closure running Box3D alone, as before, but with the new model's path and options:
    `model_path` named the default model, and a pickle (a worker's copy) held them, so it unpickled as
    an unusable closure. Now nothing of a failed __init__ is kept."""
    import copy
    import pickle

    import numpy as np

    import dodo

    closure = dodo.Closure("box3d", threads=1)
    for refused in ({"lebedev_order": 41}, {"threads": -5}):
        with pytest.raises((RuntimeError, ValueError)):
            closure.__init__(None, **refused)
        assert closure.model_path is None and not closure.has_model and repr(closure) == "dodo.Closure(Box3D only, threads=1)"
        F = _moving_cells(5)
        for other in (pickle.loads(pickle.dumps(closure)), copy.copy(closure)):
            assert isinstance(other, dodo.Closure) and not other.has_model, repr(other)
            assert np.array_equal(other.apply(F).F_pred, closure.apply(F).F_pred)
    closure.__init__(None, threads=1)  # guard: a second __init__ that succeeds takes the new model
    assert closure.has_model and closure.model_path is not None


def test_the_conventions_compute_extension_reals_as_float64():
    """dodo.conventions.minkowski_dot of bfloat16 vectors raised numpy's `TypeError: invalid data type for
    einsum`, naming neither argument (this round's "not fixed", the lead's), and total_density summed
    bfloat16 densities in bfloat16 (3 digits: six 300.5 gave 1800). Both now compute in float64."""
    import numpy as np

    from dodo.conventions import minkowski_dot, total_density

    ml_dtypes = pytest.importorskip("ml_dtypes")
    a = np.array([[1.0, 0.5, 0.25, 0.0]]).astype(ml_dtypes.bfloat16)
    assert minkowski_dot(a, a).dtype == np.float64
    assert minkowski_dot(a, a)[0] == -1.0 + 0.25 + 0.0625
    F = np.full((6, 4), 1.0078125).astype(ml_dtypes.bfloat16)  # exact in bfloat16; six of them are not
    assert total_density(F) == 6 * 1.0078125
