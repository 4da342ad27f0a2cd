"""Outside probe of the physics laws, round fifteen (docs/reliability_python.md, "Physics-law probe, round
fifteen"): the laws on the code paths a user's CPU may run that this machine's widest one hides (Box3D's
x86-64-v3 clones and the native evaluator's AVX2 kernel, reached under valgrind, which reports no AVX-512),
the native kernels' rows independent of their place in a batch, Box3D with the flux-factor limit raised to
0.999 (BOX3D_LIMITED cells), the gated growth rate across the distance gate and out of distribution on
another family, cells that are their own image under a mirror combined with nu <-> nubar, and `dodo simulate`
scale free over its density range (final states, rates, saturation times and box lengths). No law was found
broken; these are regression tests of what held.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import dodo

if not dodo.runtime_available():
    pytest.skip("dodo built without the closure runtime", allow_module_level=True)

sys.path.insert(0, os.path.dirname(__file__))
from conftest import random_states, random_velocities  # noqa: E402

pytestmark = pytest.mark.usefixtures("native_evaluator")

MU_TAU = [0, 2, 1, 3, 5, 4]
NU_NUBAR = [3, 4, 5, 0, 1, 2]
NO_CROSSING = int(dodo.CellStatus.NO_CROSSING)
BOX3D_LIMITED = int(dodo.CellStatus.BOX3D_LIMITED)


def _flavour_sums_over_ntot(F_out, F_in, scale):
    change = F_out.reshape(-1, 2, 3, 4).sum(axis=2) - F_in.reshape(-1, 2, 3, 4).sum(axis=2)
    return np.abs(change).max(axis=(1, 2)) / scale


def _host_realizable(F):
    return np.sqrt(F[..., 1] ** 2 + F[..., 2] ** 2 + F[..., 3] ** 2) <= F[..., 0]


# -- the code paths a narrower CPU runs --------------------------------------------------------------

# Runs in a process of its own (natively, and under valgrind, whose CPU has AVX2 and no AVX-512): the same
# cells through Box3D and the default model; the laws inside the run, the outputs saved for the comparison.
_PATH_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    sys.path.insert(0, sys.argv[2])
    import dodo
    from conftest import random_states, random_velocities
    rng = np.random.default_rng(15)
    n = 120
    cells = {"random": random_states(rng, n, scale=1.0),
             "mutau": random_states(rng, n, scale=1.0, mu_equals_tau=True),
             "mutau_beamed": random_states(rng, n, scale=1.0, max_flux_factor=0.979, mu_equals_tau=True)}
    saved, laws = {}, {}
    closures = {"box": dodo.Closure("box3d", threads=1), "model": dodo.Closure(threads=1)}
    for name, F0 in cells.items():
        u = random_velocities(rng, n, max_speed=0.99)
        for moving in (False, True):
            F, v = (dodo.boost_from_rest(F0, u[:, None, :]), u) if moving else (F0, None)
            case = f"{name}_{int(moving)}"
            for tag, closure in closures.items():
                r = closure.apply(F, v)
                for field in ("F_pred", "status", "growth_rate", "uncertainty"):
                    saved[f"{case}.{tag}.{field}"] = getattr(r, field)
                swapped = {label: closure.apply(F[:, p], v) for label, p in (("mu_tau", [0, 2, 1, 3, 5, 4]),
                                                                             ("nu_nubar", [3, 4, 5, 0, 1, 2]))}
                mu_is_tau = (np.all(r.F_pred[:, 1] == r.F_pred[:, 2], axis=1)
                             & np.all(r.F_pred[:, 4] == r.F_pred[:, 5], axis=1))
                stable = r.status == int(dodo.CellStatus.NO_CROSSING)
                change = r.F_pred.reshape(-1, 2, 3, 4).sum(axis=2) - F.reshape(-1, 2, 3, 4).sum(axis=2)
                W = 1.0 if v is None else v[:, 0]
                laws[f"{case}.{tag}"] = {
                    "mu=tau kept": bool(mu_is_tau.all()) if name.startswith("mutau") else True,
                    "stable untouched": bool(np.array_equal(r.F_pred[stable], F[stable])),
                    "flavour sums": float((np.abs(change).max(axis=(1, 2)) / (W * F0[:, :, 0].sum(1))).max()),
                    "realizable": bool((np.sqrt((r.F_pred[..., 1:] ** 2).sum(-1)) <= r.F_pred[..., 0]).all()),
                    "relabelled rates": all(np.array_equal(s.growth_rate, r.growth_rate) and
                                            np.array_equal(s.uncertainty, r.uncertainty) and
                                            np.array_equal(s.status, r.status) for s in swapped.values()),
                }
    np.savez(sys.argv[1], **saved)
    network = dodo._core.NativeNetwork(dodo.models.default_model_path().read_bytes())
    print(json.dumps({"box3d": dodo._core.box3d_instruction_set(), "network": network.instruction_set, "laws": laws}))
""")


def _run_paths(tmp_path, tag, prefix):
    script = tmp_path / "paths.py"
    script.write_text(_PATH_SCRIPT)
    out = tmp_path / f"{tag}.npz"
    run = subprocess.run([*prefix, sys.executable, str(script), str(out), os.path.dirname(__file__)],
                         capture_output=True, text=True, timeout=900,
                         env={**os.environ, "DODO_NETWORK_EVALUATOR": "auto"})
    assert run.returncode == 0, run.stderr[-2000:]
    # Read and closed here: an NpzFile left open until garbage collection raised a ResourceWarning in
    # whichever test ran then (a failure under the suite's warning filter) when the caller skipped.
    with np.load(out) as arrays:
        return json.loads(run.stdout.strip().splitlines()[-1]), {name: arrays[name] for name in arrays.files}


def test_the_avx2_path_keeps_the_laws_and_agrees_with_the_widest_path(tmp_path):
    """A user's CPU without AVX-512 (many clusters' AMD nodes) runs Box3D's x86-64-v3 clones and the native
    evaluator's AVX2 kernel in the closure; the tests otherwise run only this machine's widest path (the AVX2
    network kernel alone is compared on features in test_native_network.py). Under valgrind the closure takes
    those paths: mu = tau kept bit for bit, stable cells untouched, flavour sums to rounding, outputs
    realizable, rates and uncertainties of relabelled cells the same bits, and the answers those of the
    widest path to Box3D's rounding (measured 2.1e-16 N_tot) and the network's float32 rounding (3.5e-8)."""
    if shutil.which("valgrind") is None:
        pytest.skip("valgrind is not installed: the AVX2 path cannot be reached on this machine")
    native, widest = _run_paths(tmp_path, "native", [])
    narrow, avx2 = _run_paths(tmp_path, "valgrind", ["valgrind", "-q", "--tool=none"])
    if native["box3d"] == narrow["box3d"]:
        pytest.skip(f"valgrind ran the same code path as this CPU ({native['box3d']}): nothing to compare")
    assert (narrow["box3d"], narrow["network"]) == ("x86-64-v3", "avx2"), narrow
    for run in (native, narrow):
        for case, laws in run["laws"].items():
            assert laws["mu=tau kept"] and laws["stable untouched"] and laws["realizable"], (run["box3d"], case, laws)
            assert laws["relabelled rates"], (run["box3d"], case)
            assert laws["flavour sums"] <= 1e-15, (run["box3d"], case, laws["flavour sums"])
    for key in widest.files:
        if not key.endswith(".F_pred"):
            continue
        prefix = key[: -len(".F_pred")]
        assert np.array_equal(widest[prefix + ".status"], avx2[prefix + ".status"]), prefix
        ntot = np.abs(widest[key][..., 0]).sum(axis=1)  # lab densities: an upper bound of the comoving N_tot's scale
        difference = np.abs(widest[key] - avx2[key]).max(axis=(1, 2)) / ntot
        assert difference.max() <= (1e-14 if ".box." in key else 1e-6), (prefix, difference.max())
        rate, other = widest[prefix + ".growth_rate"], avx2[prefix + ".growth_rate"]
        assert np.allclose(other, rate, rtol=(1e-13 if ".box." in key else 2e-5), atol=0), prefix


def test_every_native_kernel_gives_a_row_the_same_bits_wherever_it_sits_in_the_batch():
    """The closure evaluates a cell's flavour images as rows packed among other cells' rows, so a relabelled
    cell's rows sit elsewhere in the batch; its rate and uncertainty are the same bits (the symmetry tests) only
    if a row's result does not depend on its place (the AVX-512 kernel takes rows four at a time). Each kernel
    this CPU runs: rows permuted at random, and each row three times in a row (other places modulo 4)."""
    from dodo._closure import Closure, default_model_path
    from dodo.training.features import lab_features

    package = default_model_path().read_bytes()
    rng = np.random.default_rng(4)
    u = random_velocities(rng, 3000, max_speed=0.9)
    F = dodo.boost_from_rest(random_states(rng, 3000, scale=1.0), u[:, None, :])
    X = lab_features(Closure().metadata["dodo.features"], F, u).astype(np.float32)
    X = X[np.isfinite(X).all(axis=1)]
    order = rng.permutation(len(X))
    kernels = 0
    for name in ("avx512", "avx2", "baseline"):
        try:
            network = dodo._core.NativeNetwork(package, instruction_set=name)
        except ValueError:
            continue
        kernels += 1
        whole = network.evaluate(X)
        for got, expected in zip(network.evaluate(X[order]), whole):
            assert np.array_equal(got, expected[order]), name
        for got, expected in zip(network.evaluate(np.repeat(X[:333], 3, axis=0)), whole):
            assert np.array_equal(got, np.repeat(expected[:333], 3, axis=0)), name
    assert kernels >= 1


# -- Box3D with the flux-factor limit raised ---------------------------------------------------------

def test_box3d_limited_cells_keep_the_laws_when_the_flux_factor_limit_is_raised():
    """README: max_flux_factor 0.999 with flux factors up to 0.998 flags cells BOX3D_LIMITED (the quadrature's
    reconstruction would leave the cone; the whole change is scaled). On mu = tau cells with every flux along
    one axis (flux factors 0.9-0.998; 1,254 of 100,000 limited): mu = tau kept bit for bit, flavour sums and
    lepton numbers to rounding, outputs realizable, relabelled cells the relabelled answer (mu <-> tau the same
    bits; nu <-> nubar to 3.6e-17 N_tot at rest and 1.8e-14 at W = 100: the order of the species in the
    limiter's search, ulps of the lab values), at rest and moving."""
    rng = np.random.default_rng(1)
    n = 20_000
    F0 = np.zeros((n, 6, 4))
    F0[..., 0] = rng.uniform(0.05, 1.0, (n, 6))
    flux_factor = rng.uniform(0.9, 0.998, (n, 6)) * rng.choice([-1.0, 1.0], (n, 6))
    F0[..., 3] = flux_factor * F0[..., 0]
    F0[:, 2], F0[:, 5] = F0[:, 1], F0[:, 4]
    closure = dodo.Closure("box3d", threads=2, max_flux_factor=0.999)
    limited_cells = 0
    for W in (None, 3.0, 100.0):
        if W is None:
            F, u = F0, None
        else:
            direction = rng.normal(size=(n, 3))
            direction /= np.linalg.norm(direction, axis=1, keepdims=True)
            u = np.concatenate([np.full((n, 1), W), W * np.sqrt(1 - 1 / W**2) * direction], axis=1)
            F = dodo.boost_from_rest(F0, u[:, None, :])
        r = closure.apply(F, u)
        limited = (r.status & BOX3D_LIMITED) != 0
        limited_cells += limited.sum()
        ntot = F0[:, :, 0].sum(axis=1)
        assert np.array_equal(r.F_pred[:, 1], r.F_pred[:, 2]) and np.array_equal(r.F_pred[:, 4], r.F_pred[:, 5])
        assert _flavour_sums_over_ntot(r.F_pred, F, ntot * (1.0 if W is None else W)).max() <= 1e-15
        rest_in = F if u is None else dodo.boost_to_rest(F, u[:, None, :])
        rest_out = r.F_pred if u is None else dodo.boost_to_rest(r.F_pred, u[:, None, :])
        lepton = (rest_out[:, :3, 0] - rest_out[:, 3:, 0]) - (rest_in[:, :3, 0] - rest_in[:, 3:, 0])
        assert (np.abs(lepton).max(axis=1) / ntot).max() <= 1e-13 * (1.0 if W is None else W**2)
        assert _host_realizable(r.F_pred).all()
        mu_tau = closure.apply(F[:, MU_TAU], u)
        assert np.array_equal(mu_tau.F_pred, r.F_pred[:, MU_TAU]) and np.array_equal(mu_tau.status, r.status)
        nu_nubar = closure.apply(F[:, NU_NUBAR], u)
        assert np.array_equal(nu_nubar.status, r.status)
        assert np.array_equal(nu_nubar.growth_rate, r.growth_rate)
        difference = np.abs(nu_nubar.F_pred - r.F_pred[:, NU_NUBAR]).max(axis=(1, 2)) / ntot
        assert difference.max() <= 1e-15 * (1.0 if W is None else W**2), (W, difference.max())
    assert limited_cells > 300


# -- the gated growth rate ---------------------------------------------------------------------------

def test_the_gated_growth_rate_and_the_uncertainty_are_continuous_across_the_distance_gate():
    """Since 49d9391c the rate is proxy * exp(gate * log_growth_ratio) with the distance gate
    exp(-max(0, d^2 - d2_max)/d2_max) (round thirteen measured continuity before the gate reached the rate).
    Windows of 401 cells 5e-12 apart (in the line's parameter) about d^2 = d2_max on lines from in-distribution
    to far-out crossing cells: between the two cells that straddle d2_max the rate moves by at most 2.5e-11
    N_tot (in units of N_tot times sqrt(2) G_F / hbar) and the uncertainty by 1.6e-11, less than elsewhere
    in the window (up to 1.1e-7, the network's float32 steps). A step of the gate would be the size of
    log_growth_ratio times the rate there (|ln(rate / proxy)| up to 0.39, rates up to 0.5 N_tot)."""
    pytest.importorskip("onnx")
    from gate_windows import distance_ratio, windows_across_the_gate

    from dodo.training.gate_graph import far_out_probe_cells

    ratio = distance_ratio()
    closure = dodo.Closure()
    near = random_states(np.random.default_rng(7), 200, scale=1.0)
    crossed = 0
    for F in windows_across_the_gate(closure, ratio, near, far_out_probe_cells(600, seed=99), pairs=6,
                                     half_width=1e-9):
        result = closure.apply(F)
        if len(np.unique(result.status)) != 1:
            continue  # Box3D's own step, not the gate's
        ntot = F[:, :, 0].sum(axis=1)
        rate = result.growth_rate / (ntot * dodo.conventions.GROWTH_RATE_PER_NTOT)
        outside = ratio(F) > 1
        edge = np.flatnonzero(outside[1:] != outside[:-1])
        assert np.abs(np.log(result.growth_rate / result.growth_rate_proxy)).max() > 1e-3  # a ratio the gate scales
        assert np.abs(np.diff(rate))[edge].max() <= 1e-8
        assert np.abs(np.diff(result.uncertainty / ntot))[edge].max() <= 1e-8
        crossed += 1
    assert crossed >= 3


def test_cells_with_one_species_a_million_times_the_others_get_the_proxy_where_the_gate_cuts():
    """docs/runtime.md: a cell the distance gate has cut to e^-5 gets a rate within 2% of the proxy. Round
    fourteen checked far_out_probe_cells; on cells with one species 1e6 times the others (9,289 of 40,000 cut
    that far) the rate is within 1.1% (ONNX Runtime alike)."""
    pytest.importorskip("onnx")
    from gate_windows import distance_ratio

    rng = np.random.default_rng(11)
    F = random_states(rng, 6000, scale=1.0)
    F[np.arange(len(F)), rng.integers(0, 6, len(F))] *= 1e6
    result = dodo.Closure().apply(F)
    cut = (distance_ratio()(F) >= 6) & (result.status == 0)
    assert cut.sum() > 500
    ratio = result.growth_rate[cut] / result.growth_rate_proxy[cut]
    assert np.abs(np.log(ratio)).max() <= np.log(1.02)


# -- a combined symmetry's fixed points ---------------------------------------------------------------

def test_a_cell_that_is_its_own_mirror_nu_nubar_image_gets_its_own_image_as_answer():
    """nubar_f equal to nu_f mirrored in z: the cell is its own image under the reflection z -> -z combined
    with nu <-> nubar (n_nubar_e = n_nu_e: the flavour images' blend at its centre), so its answer must be too.
    Measured on 40,000 such cells (flux factors up to 0.5 and 0.9): 1e-16 N_tot at most (Box3D, the model with
    both evaluators; 0.2% bit for bit)."""
    rng = np.random.default_rng(21)
    n = 4000
    F = np.zeros((n, 6, 4))
    F[:, :3, 0] = rng.uniform(0.1, 1.0, (n, 3))
    direction = rng.normal(size=(n, 3, 3))
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    F[:, :3, 1:] = direction * (F[:, :3, 0] * rng.uniform(0, 0.9, (n, 3)))[..., None]
    F[:, 3:] = F[:, :3]
    F[:, 3:, 3] *= -1

    def image(X):
        Y = X[:, NU_NUBAR].copy()
        Y[..., 3] *= -1
        return Y

    assert np.array_equal(image(F), F)
    ntot = F[:, :, 0].sum(axis=1)
    for closure in (dodo.Closure("box3d"), dodo.Closure()):
        result = closure.apply(F)
        assert (result.status & NO_CROSSING).sum() < n // 10
        assert (np.abs(image(result.F_pred) - result.F_pred).max(axis=(1, 2)) / ntot).max() <= 5e-16


# -- the solver --------------------------------------------------------------------------------------

def _simulate(tmp_path, name, *arguments):
    out = tmp_path / f"{name}.h5"
    run = subprocess.run([sys.executable, "-m", "dodo", "simulate", str(out), "--ncell", "16", "--nphi", "8",
                          "--hamiltonian-filter", "none", "--seed", "5", "-q", "--overwrite", *arguments],
                         capture_output=True, text=True, timeout=600)
    return run, out


def test_dodo_simulate_is_scale_free_over_its_density_range(tmp_path):
    """docs/qke.md: without vacuum and matter terms the problem is scale free (densities x s, times and lengths
    / s), and the solver takes total densities 1e-100 to 1e100 cm^-3. The same state (the same seed) at
    N_tot = 1e33, 1e13, 1e-100 and 1e100 cm^-3: final states over N_tot to 8e-16, growth rates / s,
    saturation times * s and box lengths * s to 4.8e-15 relative (the whole pipeline: axis search, box,
    end time, stepping through saturation, reduction); 1e-167 is dropped naming the range and the rescaling."""
    h5py = pytest.importorskip("h5py")
    yaml = pytest.importorskip("yaml")
    run, out = _simulate(tmp_path, "base", "--random", "1")
    assert run.returncode == 0, run.stderr
    with h5py.File(out) as f:
        initial = f["F4_initial(1|ccm)"][:]  # [state, xyzt, nu/nubar, flavour]
    F = np.transpose(initial, (0, 2, 3, 1)).reshape(-1, 6, 4)[..., [3, 0, 1, 2]]
    F = F / F[0, :, 0].sum() * 1e33
    rows = {}
    for scale in (1.0, 1e-20, 1e-133, 1e67):
        path = tmp_path / "state.yaml"
        path.write_text(yaml.safe_dump({"states": (F * scale).tolist()}))
        run, out = _simulate(tmp_path, f"s{scale:g}", "--input", str(path))
        assert run.returncode == 0, (scale, run.stderr)
        with h5py.File(out) as f:
            ntot = f["F4_initial(1|ccm)"][:][:, 3].sum(axis=(1, 2))
            rows[scale] = {"final": f["F4_final(1|ccm)"][:] / ntot[:, None, None, None],
                           "rate": f["growthRate(1|s)"][:] / scale, "tsat": f["tsat(s)"][:] * scale,
                           "length": f["box_length_cm"][:] * scale}
    for scale, row in rows.items():
        assert np.abs(row["final"] - rows[1.0]["final"]).max() <= 1e-14, scale
        for key in ("rate", "tsat", "length"):
            np.testing.assert_allclose(row[key], rows[1.0][key], rtol=1e-13, atol=0, err_msg=f"{key} at {scale:g}")
    path.write_text(yaml.safe_dump({"states": (F * 1e-200).tolist()}))
    run, _ = _simulate(tmp_path, "outside", "--input", str(path))
    assert run.returncode == 2
    assert "outside the range the solver's float64 arithmetic holds (1e-100 to 1e+100 cm^-3)" in run.stderr
    assert "Traceback" not in run.stderr
