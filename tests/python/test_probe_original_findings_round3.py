"""The outside probe's five original findings, fresh variants, round three (docs/reliability_python.md
section 126).

Nothing new broke in this round; these tests keep the variants it tried: stable cells in more odd
corners (1e300 and largest-double densities, -0.0, non-native dtypes and layouts, W = 1e3 along y, z
and a diagonal, both evaluators) come back bit for bit with their status; a C host forking from a
thread that is not main while two threads apply and a third creates handles; and the default package
of 2026-12-07 (its correction scaled by 1.1) refusing re-signed edits that undo or mix the scaling.
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

import dodo
from dodo import _core

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parents[2]
MODEL = os.path.join(os.path.dirname(dodo.__file__), "models", "qke_default.onnx")
UNSCALED = ROOT / "tests/data/training/qke_default_2026-12-07_unscaled.onnx"
S = dodo.CellStatus

from test_probe_original_findings_round2 import _crossing, _iso  # noqa: E402  (round two's cells)

pytestmark = pytest.mark.skipif(not dodo.runtime_available(), reason="closure runtime not built")


def _corners():
    equal = _iso(1e32)
    equal[:, 3] = 0.2e32
    negative_zero = equal.copy()
    negative_zero[:, 1:] = -0.0
    negative_zero[2] = -0.0
    huge_flux = _iso(1e300)
    huge_flux[:, 3] = 0.9e300
    heavy_only = _iso(0.0)
    heavy_only[3, 0] = 1e32
    heavy_only[3, 1] = 0.3e32
    return {"equal": (equal, S.NO_CROSSING), "negative zero": (negative_zero, S.NO_CROSSING),
            "1e300 equal": (_iso(1e300), S.NO_CROSSING), "1e300 with flux": (huge_flux, S.NO_CROSSING),
            "largest double": (_iso(np.finfo(float).max), S.NONFINITE),
            "1e-300": (_iso(1e-300), S.NO_CROSSING), "heavy only": (heavy_only, S.NO_CROSSING),
            "5e-324": (np.where(_iso(1.0) > 0, 5e-324, 0.0), S.ZERO_DENSITY)}


def _check_same(r, F, status):
    F = np.ascontiguousarray(np.asarray(F, dtype=np.float64))
    assert r.F_pred.tobytes() == F.tobytes()
    assert np.all(r.status == int(status))
    assert not np.any(r.growth_rate) and not np.any(r.uncertainty)


@pytest.mark.parametrize("evaluator", ["auto", "onnxruntime"])
@pytest.mark.parametrize("threads", [1, 2])
def test_stable_corners_bit_for_bit_with_status(evaluator, threads):
    closure = dodo.Closure(threads=threads, chunk_size=2, evaluator=evaluator)
    cases = _corners()
    for name, (F, status) in cases.items():
        _check_same(closure.apply(F), F, status)
    batch = np.stack([F for F, _ in cases.values()])
    r = closure.apply(batch)
    assert r.F_pred.tobytes() == batch.tobytes()
    assert [int(s) for s in r.status] == [int(s) for _, s in cases.values()]


def test_stable_cells_in_other_dtypes_and_layouts():
    closure = dodo.Closure(threads=2, chunk_size=1)
    equal = _corners()["equal"][0]
    for F in (np.asfortranarray(np.stack([equal, equal])), np.stack([equal, equal]).astype(">f8"),
              np.stack([_iso(1.0)] * 2).astype(np.float16), np.stack([_iso(1)] * 2).astype(np.int64),
              np.stack([equal, _crossing()] * 3)[::2], np.stack([np.stack([equal, equal])] * 3)):
        _check_same(closure.apply(F), F, S.NO_CROSSING)


@pytest.mark.parametrize("direction", ["y", "z", "diagonal", "y float32"])
def test_stable_cells_seen_from_w_1e3(direction):
    W = 1e3
    v = np.sqrt(1 - 1 / W**2)
    u = {"y": [W, 0, W * v, 0], "z": [W, 0, 0, W * v], "diagonal": [W] + [W * v / np.sqrt(3)] * 3,
         "y float32": np.array([W, 0, W * v, 0], dtype=np.float32)}[direction]
    closure = dodo.Closure(threads=2, chunk_size=1)
    for name in ("equal", "heavy only", "1e300 equal"):
        F = _corners()[name][0]
        _check_same(closure.apply(F, np.asarray(u)), F, S.FLUX_FACTOR)


def test_reused_out_takes_each_cells_new_status():
    closure = dodo.Closure(threads=2, chunk_size=1)
    out = closure.apply(np.stack([_crossing()] * 4))
    cases = _corners()
    batch = np.stack([cases["1e300 equal"][0], _crossing(), cases["negative zero"][0], cases["5e-324"][0]])
    r = closure.apply(batch, out=out)
    for i in (0, 2, 3):
        assert r.F_pred[i].tobytes() == batch[i].tobytes()
        assert r.growth_rate[i] == 0.0 and r.uncertainty[i] == 0.0
    assert [int(s) for s in r.status] == [int(S.NO_CROSSING), 0, int(S.NO_CROSSING), int(S.ZERO_DENSITY)]
    with pytest.raises(ValueError, match="out.F_pred has shape"):
        closure.apply(batch, out=closure.apply(np.stack([_crossing()] * 8)))


# --- (2) fork: a C host forking from a thread that is not main --------------------------------------

C_FORK_FROM_A_THREAD = (ROOT / "tests/python/probe_original_findings_round3_fork_host.c")


@pytest.mark.parametrize("evaluator", ["auto", "onnxruntime"])
def test_c_host_forks_from_a_thread_while_others_apply_and_create(tmp_path, evaluator):
    """Two threads loop in dodo_apply on one handle (threads 2, chunk 64), a third creates and destroys
    handles with the model, a fourth (not main) forks 6 times; each child applies on the parent's
    handle, creates its own, forks a grandchild that applies on both and leaves with exit(); every
    answer the parent's bits, no hang."""
    from capi_host import compile_host, default_model, run_host

    program = compile_host(tmp_path, "fork_host", C_FORK_FROM_A_THREAD.read_text())
    lines = run_host(program, default_model(), "6", timeout=240, env={"DODO_NETWORK_EVALUATOR": evaluator})
    assert lines == ["forks 6 failures 0"]


# --- (4) the default package of 2026-12-07, correction scaled by 1.1 --------------------------------

def _load(path):
    import onnx

    return onnx.load(str(path), load_external_data=False)


def _meta(model):
    return {e.key: e.value for e in model.metadata_props}


def _set(model, key, value):
    for entry in model.metadata_props:
        if entry.key == key:
            if value is None:
                model.metadata_props.remove(entry)
            else:
                entry.value = value
            return
    model.metadata_props.add(key=key, value=value)


def _scale_pattern(model, factor, graph=True, inline=True):
    from onnx import numpy_helper

    description = json.loads(_meta(model)["dodo.native_network"])
    pattern = np.array(description["pattern"], dtype=np.float32)
    hits = 0
    if graph:
        for tensor in model.graph.initializer:
            a = numpy_helper.to_array(tensor)
            if a.size == pattern.size and np.array_equal(a.ravel().astype(np.float32), pattern):
                tensor.CopyFrom(numpy_helper.from_array((a * np.float32(factor)).astype(a.dtype), tensor.name))
                hits += 1
        assert hits == 1
    if inline:
        description["pattern"] = [float(x) for x in pattern * np.float32(factor)]
        _set(model, "dodo.native_network", json.dumps(description))


def _json_set(key, field, value):
    def edit(model):
        d = json.loads(_meta(model)[key])
        d[field] = value
        _set(model, key, json.dumps(d))
    return edit


def _new_metadata_on_unscaled(model):
    for key, value in _meta(_load(MODEL)).items():
        if key not in ("dodo.content_sha256", "dodo.metadata_sha256"):
            _set(model, key, value)


def _keep_last_test_vector(model):
    """Only vector 10, a probe flagged by the cap (stable to the network): the last until the cap-edge
    probes 11-12 were appended (test_probe_vectors.py), which reach the network."""
    d = json.loads(_meta(model)["dodo.test_vectors"])
    for key in ("F_init", "u", "F_pred", "growth_over_ntot", "uncertainty"):
        d[key] = d[key][10:11]
    _set(model, "dodo.test_vectors", json.dumps(d))


EDITS = {
    "unscaled content, new metadata": (UNSCALED, _new_metadata_on_unscaled, None, "DODO_ERROR_MODEL_METADATA"),
    "unscaled content, new metadata, onnxruntime": (UNSCALED, _new_metadata_on_unscaled, "onnxruntime",
                                                   "DODO_ERROR_SELF_TEST"),
    "new content, unscaled test vectors": (MODEL, lambda m: _set(m, "dodo.test_vectors", _meta(_load(UNSCALED))[
        "dodo.test_vectors"]), None, "DODO_ERROR_SELF_TEST"),
    "pattern / 1.1 in graph and description": (MODEL, lambda m: _scale_pattern(m, 1 / 1.1), None,
                                               "DODO_ERROR_SELF_TEST"),
    "pattern / 1.1 in the description only": (MODEL, lambda m: _scale_pattern(m, 1 / 1.1, graph=False), None,
                                              "DODO_ERROR_MODEL_METADATA"),
    "pattern / 1.1 in the graph only, onnxruntime": (MODEL, lambda m: _scale_pattern(m, 1 / 1.1, inline=False),
                                                     "onnxruntime", "DODO_ERROR_SELF_TEST"),
    "pattern x 1.01": (MODEL, lambda m: _scale_pattern(m, 1.01), None, "DODO_ERROR_SELF_TEST"),
    "sigma_floor 1e-3": (MODEL, _json_set("dodo.native_network", "sigma_floor", 1e-3), None,
                         "DODO_ERROR_MODEL_METADATA"),
    "error_per_spread 3": (MODEL, _json_set("dodo.native_network", "error_per_spread", 3.0), None,
                           "DODO_ERROR_MODEL_METADATA"),
    "tiny 1e-30": (MODEL, _json_set("dodo.native_network", "tiny", 1e-30), None, "DODO_ERROR_MODEL_METADATA"),
    "r_scale as a string": (MODEL, _json_set("dodo.native_network", "r_scale", "0.019581729546189308"), None,
                            "DODO_ERROR_MODEL_METADATA"),
    "lebedev_order as a string": (MODEL, _json_set("dodo.box3d", "lebedev_order", "17"), None,
                                  "DODO_ERROR_MODEL_METADATA"),
    "lebedev_order 17.4": (MODEL, _json_set("dodo.box3d", "lebedev_order", 17.4), None, "DODO_ERROR_MODEL_METADATA"),
    "max_flux_factor as a string": (MODEL, _json_set("dodo.box3d", "max_flux_factor", "0.98"), None,
                                    "DODO_ERROR_MODEL_METADATA"),
    "output_size ' 78'": (MODEL, lambda m: _set(m, "dodo.output_size", " 78"), None, "DODO_ERROR_MODEL_METADATA"),
    "features with a NUL": (MODEL, lambda m: _set(m, "dodo.features", "invariants27+box7+eln18-v1\x00"), None,
                            "DODO_ERROR_MODEL_METADATA"),
    "outputs without uncertainty": (MODEL, lambda m: _set(m, "dodo.outputs", '["head_output", "log_growth_ratio"]'),
                                    None, "DODO_ERROR_MODEL_FORMAT"),
    "growth_over_ntot null": (MODEL, _json_set("dodo.test_vectors", "growth_over_ntot", None), None,
                              "DODO_ERROR_MODEL_METADATA"),
    "test vectors without u": (MODEL, lambda m: _set(m, "dodo.test_vectors", json.dumps(
        {k: v for k, v in json.loads(_meta(m)["dodo.test_vectors"]).items() if k != "u"})), None, "DODO_ERROR_SELF_TEST"),
    "only the last (stable) test vector": (MODEL, _keep_last_test_vector, None, "DODO_ERROR_SELF_TEST"),
}


@pytest.mark.parametrize("name", list(EDITS))
def test_resigned_edits_of_the_scaled_default_package_are_refused(tmp_path, name):
    base, edit, evaluator, code = EDITS[name]
    model = _load(base)
    edit(model)
    path = tmp_path / "edited.onnx"
    path.write_bytes(_core.with_content_digest(model.SerializeToString()))
    kwargs = {} if evaluator is None else {"evaluator": evaluator}
    with pytest.raises(RuntimeError, match=code) as info:
        dodo.Closure(path, **kwargs)
    assert "\n" not in str(info.value).strip()


def test_the_two_packages_load_unedited():
    """The edits above are refused for the edit, not for the base: both packages load as shipped."""
    assert dodo.Closure(MODEL).self_test() <= 1e-5
    assert dodo.Closure(UNSCALED).self_test() <= 1e-5
