"""Probe test vectors: a package re-signed after an edit of its gate or Box3D settings fails its
self-test (outside probes, Python rounds forty-eight and forty-nine: the default model loaded with
its gate switched off, precision matrix zeroed or d2_max at 1e30, and with Box3D's flux-factor cap
lowered, because its test vectors never reached the gate or the cap)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dodo
import dodo._core
from dodo.training.probe_vectors import add_probe_vectors, mutants

ROOT = Path(__file__).resolve().parents[2]

#: Box3D's code path on which the shipped package's probe outputs were computed (training/models/README.md,
#: "The probes' outputs recomputed"). Other paths (AVX2, baseline x86-64) sum in another order, ~1e-15
#: N_tot apart (README, "Accuracy"), and the float32 network may round such an input to the neighbouring
#: float: there the probes hold to the network's rounding (3.7e-9 N_tot seen on the baseline path; the
#: self-test's tolerance is 1e-5), not to the last bit. Before, these tests failed on every CPU without
#: AVX-512 (found by the suite run on a build without the per-CPU clones, 2026-12-07).
PROBES_MADE_ON = "x86-64-v4"
#: The two cap-edge probes (vectors 11 and 12, appended 2026-12-07 by tools/probe_test_vectors.py; the
#: first returns its input, the second a corrected cell) were computed on a CPU without AVX-512.
CAP_EDGE_PROBES = slice(11, 13)
CAP_EDGE_PROBES_MADE_ON = "x86-64-v3"
ROUNDING_OVER_NTOT = 1e-7


def on_the_probes_path(made_on: str = PROBES_MADE_ON) -> bool:
    return dodo._core.box3d_instruction_set() == made_on


def assert_same_to_rounding(got, stored, scale, tolerance=ROUNDING_OVER_NTOT, made_on=PROBES_MADE_ON):
    """Equal bits on the code path the stored values were made on; elsewhere |got - stored| <= tolerance x
    scale (scale: each cell's N_tot for densities and fluxes, 1 for values in units of N_tot, |stored| for
    growth rates)."""
    got, stored = np.asarray(got, dtype=float), np.asarray(stored, dtype=float)
    if on_the_probes_path(made_on):
        assert np.array_equal(got, stored)
        return
    scale = np.asarray(scale, dtype=float)
    scale = scale.reshape(scale.shape + (1,) * (got.ndim - scale.ndim))
    assert np.all(np.abs(got - stored) <= tolerance * scale), np.max(np.abs(got - stored) / scale)


def ntot_of(F_init):
    return np.abs(np.asarray(F_init, dtype=float)[:, :, 0]).sum(axis=1)


@pytest.fixture(scope="module")
def default_package() -> bytes:
    return Path(dodo.models.default_model_path()).read_bytes()


def test_every_edit_of_the_shipped_default_fails_its_self_test(default_package):
    edits = mutants(default_package)
    names = [name for name, _ in edits]
    assert any("precision" in name for name in names) and any("1e30" in name for name in names)
    assert any("max_flux_factor" in name for name in names)
    for name, package in edits:
        # The native form's downgrade (growth ungated) is refused before the self-test: the load's own
        # comparison of the native evaluator with the graph sees it.
        refusal = ("does not reproduce the graph's log_growth_ratio" if "native form" in name
                   else "DODO_ERROR_SELF_TEST: self-test failed: test vector")
        with pytest.raises(RuntimeError, match=refusal):
            dodo.Closure(package, threads=1)


def test_the_shipped_default_still_passes_its_self_test_on_both_evaluators(default_package):
    for evaluator, runs in (("auto", "native"), ("onnxruntime", "onnxruntime")):
        closure = dodo.Closure(default_package, threads=1, evaluator=evaluator)
        assert closure.evaluator == runs and closure.self_test() < 1e-7


def test_probes_change_no_result_and_are_the_network_on_the_cell_itself(default_package):
    """The probes are the package's own outputs on cells outside the flavour-image bands: the
    self-test (which runs without the images) reproduces them to the last bit; adding them again
    leaves every other vector as it was."""
    vectors = json.loads(dodo.Closure(default_package, threads=1).metadata["dodo.test_vectors"])
    F, u = np.array(vectors["F_init"]), np.array(vectors["u"])
    result = dodo.Closure(default_package, threads=1).apply(F, u)
    assert len(F) == 13  # the exporter drew 6; the rest are probes (training/models/README.md)
    for probes, made_on in ((slice(6, 11), PROBES_MADE_ON), (CAP_EDGE_PROBES, CAP_EDGE_PROBES_MADE_ON)):
        assert_same_to_rounding(result.F_pred[probes], np.array(vectors["F_pred"])[probes], ntot_of(F[probes]),
                                made_on=made_on)
        assert_same_to_rounding(result.uncertainty[probes], np.array(vectors["uncertainty"])[probes], 1.0,
                                made_on=made_on)


def test_a_re_signed_cap_moved_by_any_amount_a_user_would_notice_fails_the_self_test(default_package):
    """Two probes sit at the flux-factor cap's edges, 1e-9 of it below and above (outside probe, section
    126: caps re-signed at 0.985, 0.981, 0.9801, 0.98001 and 0.9800001 loaded, and a cell at flux factor
    0.983, flagged and returned as given, was then corrected by 0.51 N_tot). The upper probe is returned
    as given, the lower one corrected; the cap itself still loads."""
    import onnx

    from dodo import _core

    def with_cap(cap):
        model = onnx.load_from_string(default_package)
        for entry in model.metadata_props:
            if entry.key == "dodo.box3d":
                settings = json.loads(entry.value)
                assert settings["max_flux_factor"] == 0.98
                settings["max_flux_factor"] = cap
                entry.value = json.dumps(settings)
        return _core.with_content_digest(model.SerializeToString())

    assert dodo.Closure(with_cap(0.98), threads=1).self_test() < 1e-7
    for cap in (0.985, 0.981, 0.9801, 0.98001, 0.9800001, 0.98000001, 0.975, 0.979, 0.9799, 0.97999, 0.9799999,
                0.97999999):
        with pytest.raises(RuntimeError, match="DODO_ERROR_SELF_TEST: self-test failed: test vector 1[12] "):
            dodo.Closure(with_cap(cap), threads=1)
    vectors = json.loads(dodo.Closure(default_package, threads=1).metadata["dodo.test_vectors"])
    F = np.array(vectors["F_init"])[CAP_EDGE_PROBES]
    flux_factor = np.linalg.norm(F[:, 0, 1:], axis=-1) / F[:, 0, 0]
    assert np.allclose(flux_factor, [0.98 * (1 + 1e-9), 0.98 * (1 - 1e-9)], rtol=1e-15, atol=0)
    assert np.array_equal(np.array(vectors["F_pred"])[11], F[0])  # flagged FLUX_FACTOR: returned as given
    result = dodo.Closure(default_package, threads=1).apply(F)
    assert result.status[0] & int(dodo.CellStatus.FLUX_FACTOR) and not result.status[1] & int(dodo.CellStatus.FLUX_FACTOR)
    assert np.abs(result.F_pred[1] - F[1]).max() > 0.05 * ntot_of(F[1:])[0]


def test_add_probe_vectors_refuses_edits_a_package_accepted_before(default_package):
    """On a package with the exporter's vectors alone (the default's first six), most edits load;
    after add_probe_vectors, none does."""
    import onnx

    from dodo import _core

    model = onnx.load_from_string(default_package)
    for entry in model.metadata_props:
        if entry.key == "dodo.test_vectors":
            vectors = json.loads(entry.value)
            entry.value = json.dumps({key: value[:6] if isinstance(value, list) else value
                                      for key, value in vectors.items()})
    bare = _core.with_content_digest(model.SerializeToString())
    accepted = []
    for name, package in mutants(bare):
        try:
            dodo.Closure(package, threads=1)
            accepted.append(name)
        except RuntimeError:
            pass
    assert len(accepted) >= 5, accepted  # the gap the probes close
    probed, report = add_probe_vectors(bare)
    assert report["probes"] >= 1 and all(row["refused"] for row in report["mutants"].values()), report
    assert dodo.Closure(probed, threads=1).self_test() < 1e-7


def test_the_tool_writes_a_package_that_refuses_the_edits_and_never_over_its_input(tmp_path, default_package):
    source = tmp_path / "in.onnx"
    source.write_bytes(default_package)
    out = tmp_path / "out.onnx"
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "probe_test_vectors.py"), str(source), "-o", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "0 probe vectors appended; 12 of 12 edits now fail its self-test" in done.stdout  # probed already
    for _, package in mutants(out.read_bytes()):
        with pytest.raises(RuntimeError, match="DODO_ERROR_SELF_TEST|DODO_ERROR_MODEL_FORMAT"):
            dodo.Closure(package, threads=1)
    again = subprocess.run([sys.executable, str(ROOT / "tools" / "probe_test_vectors.py"), str(source), "-o",
                            str(source)], capture_output=True, text=True, timeout=600)
    assert again.returncode != 0 and source.read_bytes() == default_package


def test_remaking_the_probes_with_this_runtime_gives_the_shipped_package_again(default_package):
    """tools/probe_test_vectors.py --remake 6: the exporter's six kept, the probes appended again with
    this runtime's outputs: the same cells and the same metadata; the outputs the same bits on the code
    path each probe was made on (training/models/README.md: vectors 6-10 on AVX-512, the cap-edge ones
    11-12 without), elsewhere to rounding; keeping more vectors than it holds, or none, is refused."""
    from dodo.training.probe_vectors import without_vectors_after

    remade, report = add_probe_vectors(without_vectors_after(default_package, 6))
    assert report["probes"] == 7  # 5 since the re-export of 2026-12-07, 2 at the cap's edges (training/models/README.md)
    shipped, again = dodo.Closure(default_package, threads=1).metadata, dodo.Closure(remade, threads=1).metadata
    digests = {"dodo.test_vectors", "dodo.content_sha256", "dodo.metadata_sha256"}
    assert {k: v for k, v in shipped.items() if k not in digests} == \
        {k: v for k, v in again.items() if k not in digests}
    old, new = json.loads(shipped["dodo.test_vectors"]), json.loads(again["dodo.test_vectors"])
    assert old["F_init"] == new["F_init"] and old["u"] == new["u"]
    for probes, made_on in ((slice(0, 11), PROBES_MADE_ON), (CAP_EDGE_PROBES, CAP_EDGE_PROBES_MADE_ON)):
        assert_same_to_rounding(new["F_pred"][probes], old["F_pred"][probes], ntot_of(old["F_init"][probes]),
                                made_on=made_on)
        assert_same_to_rounding(new["uncertainty"][probes], old["uncertainty"][probes], 1.0, made_on=made_on)
        assert_same_to_rounding(new["growth_over_ntot"][probes], old["growth_over_ntot"][probes],
                                np.abs(old["growth_over_ntot"][probes]), tolerance=1e-5,
                                made_on=made_on)  # exp of a float32 output: ~3e-7 relative seen
    for kept in (0, 10_000):
        with pytest.raises(ValueError, match=f"cannot keep {kept} test vectors: the package holds 13"):
            without_vectors_after(default_package, kept)
