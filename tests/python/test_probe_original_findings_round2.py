"""The outside probe's five original findings, fresh variants (docs/reliability_python.md section 119).

Nothing new broke in this round; these tests keep the variants it tried: stable cells in odd corners
come back bit for bit with their status, a fork (and a multiprocessing 'fork' pool) while other
threads are inside ``apply`` works, and re-signed metadata edits are refused at load.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import dodo
from dodo import _core

MODEL = os.path.join(os.path.dirname(dodo.__file__), "models", "qke_default.onnx")


def _iso(n):
    F = np.zeros((6, 4))
    F[:, 0] = n
    return F


def _stable_cases():
    one = _iso(1e32)
    one[1:] = 0
    one[0, 3] = 0.1e32
    equal = _iso(1e32)
    equal[:, 3] = 0.2e32
    zero = _iso(1e32)
    zero[2] = 0
    return {"one species only": (one, dodo.CellStatus.NO_CROSSING),
            "all species equal": (equal, dodo.CellStatus.NO_CROSSING),
            "one species zero": (zero, dodo.CellStatus.NO_CROSSING),
            "denormal densities": (_iso(5e-310), dodo.CellStatus.ZERO_DENSITY)}


def _crossing():
    F = _iso(1e32)
    F[0, 3] = 0.5e32
    F[1, 0] = 0.9e32
    F[1, 3] = -0.5e32
    return F


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", list(_stable_cases()))
def test_stable_cell_bit_for_bit_with_status(name, threads):
    F, status = _stable_cases()[name]
    closure = dodo.Closure(threads=threads, chunk_size=4)
    for cell in (F, F.astype(np.float32)):
        r = closure.apply(cell)
        assert r.F_pred.tobytes() == np.asarray(cell, dtype=np.float64).tobytes(), name
        assert int(r.status) == int(status), name
        assert float(r.growth_rate) == 0.0


@pytest.mark.parametrize("threads", [1, 2])
def test_stable_cells_between_crossing_ones_with_reused_out(threads):
    cases = _stable_cases()
    stable = [cases["all species equal"][0], cases["one species zero"][0]]
    batch = np.stack([_crossing(), stable[0], _crossing(), stable[1]] * 3)
    closure = dodo.Closure(threads=threads, chunk_size=4)
    out = closure.apply(np.stack([_crossing()] * 12))  # every slot holds a corrected cell first
    r = closure.apply(batch, out=out)
    for i in range(1, 12, 2):
        assert r.F_pred[i].tobytes() == batch[i].tobytes()
        assert int(r.status[i]) == int(dodo.CellStatus.NO_CROSSING)
        assert r.growth_rate[i] == 0.0 and r.uncertainty[i] == 0.0
    assert not np.any(r.status[0::2])


_FORK_SCRIPT = textwrap.dedent("""
    import multiprocessing as mp, os, subprocess, sys, threading
    import numpy as np, dodo
    c = dodo.Closure(threads=2)
    F = np.zeros((2000, 6, 4)); F[..., 0] = 1e32; F[:, 0, 3] = 0.5e32; F[:, 1, 0] = 0.9e32; F[:, 1, 3] = -0.5e32
    ref = c.apply(F).F_pred.copy()
    stop = threading.Event()
    def loop():
        while not stop.is_set():
            c.apply(F)
    def work(i):
        return np.array_equal(c.apply(F[i * 10:(i + 1) * 10]).F_pred, ref[i * 10:(i + 1) * 10])
    ts = [threading.Thread(target=loop) for _ in range(2)]
    [t.start() for t in ts]
    pid = os.fork()
    if pid == 0:
        ok = np.array_equal(c.apply(F).F_pred, ref)
        ok = ok and subprocess.run([sys.executable, "-c", "pass"], timeout=60).returncode == 0
        grandchild = os.fork()
        if grandchild == 0:
            os._exit(0 if np.array_equal(c.apply(F).F_pred, ref) else 3)
        ok = ok and os.waitpid(grandchild, 0)[1] == 0
        os._exit(0 if ok else 2)
    child_status = os.waitpid(pid, 0)[1]
    with mp.get_context("fork").Pool(2) as pool:
        pooled = pool.map_async(work, range(8)).get(timeout=120)
    stop.set()
    [t.join() for t in ts]
    print("child", child_status, "pool", all(pooled))
""")


def test_fork_and_fork_pool_while_threads_are_inside_apply():
    run = subprocess.run([sys.executable, "-c", _FORK_SCRIPT], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["child", "0", "pool", "True"]


def _edited(tmp_path, key, edit, name):
    import onnx

    model = onnx.load(MODEL, load_external_data=False)
    for entry in model.metadata_props:
        if entry.key == key:
            entry.value = edit(entry.value)
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(_core.with_content_digest(model.SerializeToString()))
    return path


def _json_edit(field, value):
    def edit(text):
        d = json.loads(text)
        d[field] = value
        return json.dumps(d)
    return edit


@pytest.mark.parametrize("key, edit, code", [
    ("dodo.features", lambda v: v.replace("-v1", "-v2"), "DODO_ERROR_MODEL_METADATA"),
    ("dodo.box3d", _json_edit("lebedev_order", 11), "DODO_ERROR_MODEL_METADATA"),
    ("dodo.box3d", _json_edit("max_flux_factor", 0.99), "DODO_ERROR_SELF_TEST"),
    ("dodo.native_network", _json_edit("input_std", "ensemble.student.mean"), "DODO_ERROR_MODEL_FORMAT"),
    ("dodo.native_network", _json_edit("form", "silu-mlp-density-residual-v1"), "DODO_ERROR_MODEL_FORMAT"),
    ("dodo.output_size", lambda v: "77", "DODO_ERROR_MODEL_METADATA"),
    ("dodo.head", lambda v: "plain", "DODO_ERROR_MODEL_METADATA"),
])
def test_resigned_metadata_edits_are_refused_at_load(tmp_path, key, edit, code):
    path = _edited(tmp_path, key, edit, key.replace(".", "_"))
    with pytest.raises(RuntimeError, match=code) as info:
        dodo.Closure(path)
    assert "\n" not in str(info.value).strip()
