"""Outside probe of the fidelity-measuring tools (issue 10's evaluator): `dodo score` against an
oracle written here from the shared README's definition, on the Emu layout of spec/data.md.

The metric: per state, |n_pred - n_true| / N_tot per species after averaging mu and tau (nu and
nubar separately), averaged over the six species; N_tot is the initial state's total density
(rest frame); the closure is applied to F4_initial(1|ccm) and compared with F4_final(1|ccm). The
oracle reads the file's datasets with NumPy in the Emu layout [n, (x, y, z, t), (nu, nubar),
(e, mu, tau)] and does not use dodo's conventions module or dodo.score: dodo is used only for the
closure's answer (what is scored), never for how it is scored.

tests/data/qke/emu_1d_validation.h5 is read here only to compare the tool with the oracle; nothing
is chosen with it.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")
import dodo  # noqa: E402
from cli_helpers import REPO, run  # noqa: E402

VALIDATION = REPO / "tests" / "data" / "qke" / "emu_1d_validation.h5"
INITIAL, FINAL, STDDEV, GROWTH = "F4_initial(1|ccm)", "F4_final(1|ccm)", "F4_final_stddev(1|ccm)", "growthRate(1|s)"


# --------------------------------------------------------------------------------------------- oracle
def emu_to_species(emu: np.ndarray) -> np.ndarray:
    """[n, (x,y,z,t), 2, 3] -> [n, 6 (nu_e, nu_mu, nu_tau, nubar_e, ...), (t,x,y,z)], written here."""
    n = emu.shape[0]
    out = np.empty((n, 6, 4))
    for s in range(2):
        for f in range(3):
            out[:, 3 * s + f, 0] = emu[:, 3, s, f]
            out[:, 3 * s + f, 1:] = emu[:, 0:3, s, f]
    return out


def species_to_emu(F: np.ndarray) -> np.ndarray:
    n = F.shape[0]
    out = np.empty((n, 4, 2, 3))
    for s in range(2):
        for f in range(3):
            out[:, 3, s, f] = F[:, 3 * s + f, 0]
            out[:, 0:3, s, f] = F[:, 3 * s + f, 1:]
    return out


def heavy_averaged(n: np.ndarray) -> np.ndarray:
    """Densities [n, 2, 3] with mu and tau replaced by their mean (nu and nubar separately)."""
    out = np.array(n, float, copy=True)
    heavy = 0.5 * (out[:, :, 1] + out[:, :, 2])
    out[:, :, 1] = heavy
    out[:, :, 2] = heavy
    return out


def oracle_errors(emu_initial, emu_final, F_pred, average=True) -> np.ndarray:
    """The README's metric per state: emu arrays from the file, F_pred [n, 6, (t,x,y,z)] of the closure."""
    n_true = np.asarray(emu_final, float)[:, 3]  # [n, 2, 3]
    n_pred = np.stack([F_pred[:, 0:3, 0], F_pred[:, 3:6, 0]], axis=1)  # [n, 2, 3]
    ntot = np.asarray(emu_initial, float)[:, 3].sum(axis=(1, 2))
    if average:
        n_true, n_pred = heavy_averaged(n_true), heavy_averaged(n_pred)
    return np.abs(n_pred - n_true).sum(axis=(1, 2)) / 6.0 / ntot


def oracle_report(emu_initial, emu_final, model, growth=None, threshold=0.0025):
    """What `dodo score MODEL` must say, from the closure's answers and NumPy alone."""
    F_init = emu_to_species(np.asarray(emu_initial, float))
    closure = dodo.Closure(model)
    result = closure.apply(F_init)
    settings = closure.box3d_settings
    box = dodo.box3d(F_init, lebedev_order=int(settings["lebedev_order"]), z_method=str(settings["z_method"]),
                     max_flux_factor=float(settings["max_flux_factor"]))
    model_error = oracle_errors(emu_initial, emu_final, np.asarray(result.F_pred))
    box_error = oracle_errors(emu_initial, emu_final, np.asarray(box.F_box))
    difference = model_error - box_error
    out = {"model": model_error, "box3d": box_error, "difference": difference,
           "worse": int(np.sum(difference > threshold)), "better": int(np.sum(difference < 0)),
           "worst": [int(i) for i in np.argsort(-difference, kind="stable")[:5]]}
    if growth is not None:
        growth = np.asarray(growth, float)
        usable = np.isfinite(growth) & (growth > 0)
        for name, rate in (("model", np.asarray(result.growth_rate, float)),
                           ("box3d_proxy", np.asarray(result.growth_rate_proxy, float))):
            ratio = rate[usable] / growth[usable]
            out[name + "_within"] = float(np.mean(np.abs(ratio - 1) <= 0.10)) if usable.any() else None
            out[name + "_median"] = float(np.median(ratio)) if usable.any() else None
        out["growth_states"] = int(usable.sum())
    return out


def percentile_bootstrap(values, resamples, seed, level=0.95):
    """A percentile bootstrap interval of the mean over states, written here."""
    rng = np.random.default_rng(seed)
    values = np.asarray(values, float)
    means = np.array([values[rng.integers(0, len(values), len(values))].mean() for _ in range(resamples)])
    return tuple(np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2]))


# ---------------------------------------------------------------------------------- synthetic files
def synthetic_states(seed, n, nubar_heavy=False, zero_species=False, mu_tau_split=0.0):
    """Emu-layout initial and final arrays: random crossing-prone states, and a truth that conserves
    the flavour-summed densities and each flavour's lepton number (Box3D's answer moved along such
    directions), mu != tau by ``mu_tau_split`` of N_tot."""
    rng = np.random.default_rng(seed)
    density = rng.uniform(0.3, 1.0, (n, 2, 3)) * 1e32
    if nubar_heavy:
        density[:, 1] *= 4.0
    if zero_species:
        density[:, 0, 2] = 0.0  # no nu_tau
        density[:, 1, 2] = 0.0  # no nubar_tau
    direction = rng.normal(size=(n, 3, 2, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    flux_factor = rng.uniform(0.0, 0.6, (n, 1, 2, 3))
    emu_initial = np.empty((n, 4, 2, 3))
    emu_initial[:, 3] = density
    emu_initial[:, 0:3] = direction * flux_factor * density[:, None]
    F_init = emu_to_species(emu_initial)
    F_final = np.array(dodo.box3d(F_init).F_box, float)
    ntot = density.sum(axis=(1, 2))
    # e <-> mu exchange (same for nu and nubar: each flavour's lepton number and the sums are kept)
    shift = rng.uniform(-0.01, 0.01, n) * ntot
    shift = np.minimum(shift, 0.5 * np.minimum(F_final[:, 1, 0], F_final[:, 4, 0]))
    shift = np.maximum(shift, -0.5 * np.minimum(F_final[:, 0, 0], F_final[:, 3, 0]))
    for e, mu in ((0, 1), (3, 4)):
        F_final[:, e, 0] += shift
        F_final[:, mu, 0] -= shift
    if mu_tau_split and not zero_species:
        split = mu_tau_split * ntot
        split = np.minimum(split, 0.5 * np.minimum(F_final[:, 2, 0], F_final[:, 5, 0]))
        for mu, tau in ((1, 2), (4, 5)):
            F_final[:, mu, 0] += split
            F_final[:, tau, 0] -= split
    return emu_initial, species_to_emu(F_final)


def write_emu(path, emu_initial, emu_final, growth=None, stddev=False, extra=False, nf=3):
    with h5py.File(path, "w") as f:
        f[INITIAL] = emu_initial
        f[FINAL] = emu_final
        if stddev:
            f[STDDEV] = np.abs(emu_final) * 1e-3
        if growth is not None:
            f[GROWTH] = growth
        if nf is not None:
            f["nf"] = nf
        if extra:
            f["directorynames"] = np.array([f"run{i}".encode() for i in range(len(emu_initial))])
            f["something_else"] = np.arange(7.0)
            f.attrs["campaign"] = "probe"
            f.attrs["F4_initial"] = 1.0
            f.create_group("xplot_group")["x"] = np.zeros(3)
    return path


def score_json(capsys, tmp_path, model, *files, bootstrap=1000, seed=0, extra=()):
    out = tmp_path / f"score_{len(list(tmp_path.iterdir()))}.json"
    code, stdout, err = run(capsys, ["score", model, *map(str, files), "--bootstrap", str(bootstrap),
                                     "--seed", str(seed), "--json", str(out), *extra])
    assert code == 0, err
    return json.loads(out.read_text()), stdout, err


def assert_matches_oracle(report, oracle, growth=True):
    model, box = np.array(report["per_state"]["model"], float), np.array(report["per_state"]["box3d"], float)
    np.testing.assert_allclose(model, oracle["model"], rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(box, oracle["box3d"], rtol=1e-10, atol=1e-15)
    assert report["model"]["mean"] == pytest.approx(oracle["model"].mean(), rel=1e-10, abs=1e-15)
    assert report["box3d"]["mean"] == pytest.approx(oracle["box3d"].mean(), rel=1e-10, abs=1e-15)
    assert report["model"]["max"] == pytest.approx(oracle["model"].max(), rel=1e-10, abs=1e-15)
    assert report["box3d"]["max"] == pytest.approx(oracle["box3d"].max(), rel=1e-10, abs=1e-15)
    assert report["difference"]["mean"] == pytest.approx(oracle["difference"].mean(), rel=1e-9, abs=1e-15)
    assert report["states_worse_than_box3d"] == oracle["worse"]
    assert report["states_better_than_box3d"] == oracle["better"]
    shown = [w["index"] for w in report["worst_states"]]
    # ties (model == Box3D, e.g. a model that learned nothing) may come in any order among equals
    assert sorted(oracle["difference"][shown].tolist(), reverse=True) == pytest.approx(
        sorted(oracle["difference"], reverse=True)[:len(shown)], rel=1e-9, abs=1e-15)
    for w in report["worst_states"]:
        assert w["model"] == pytest.approx(oracle["model"][w["index"]], rel=1e-10, abs=1e-15)
        assert w["box3d"] == pytest.approx(oracle["box3d"][w["index"]], rel=1e-10, abs=1e-15)
    if growth and "growth_states" in oracle:
        g = report["growth_rate"]
        assert g["n_states"] == oracle["growth_states"]
        for name in ("model", "box3d_proxy"):
            if oracle[name + "_within"] is None:
                assert g[name]["within_10_percent"] is None
            else:
                assert g[name]["within_10_percent"] == pytest.approx(oracle[name + "_within"])
                assert g[name]["median_ratio"] == pytest.approx(oracle[name + "_median"], rel=1e-12)
    for name in ("model", "box3d", "difference"):  # every interval covers its sample mean
        low, high = report[name]["ci95"]
        assert low <= report[name]["mean"] <= high


def read(path, *keys):
    with h5py.File(path, "r") as f:
        return [f[key][()] for key in keys]


# ---------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("model", ["default", "box3d"])
def test_validation_file_scored_as_defined(capsys, tmp_path, model):
    if not VALIDATION.exists():
        pytest.skip("no validation file in this checkout")
    emu_initial, emu_final, growth = read(VALIDATION, INITIAL, FINAL, GROWTH)
    report, stdout, _ = score_json(capsys, tmp_path, model, VALIDATION)
    oracle = oracle_report(emu_initial, emu_final, None if model == "default" else model, growth)
    assert report["n_states"] == report["n_scored"] == len(emu_initial)
    assert_matches_oracle(report, oracle)
    # the README's anchor: Box3D scores 0.0065 on these 32 runs
    assert round(report["box3d"]["mean"], 4) == 0.0065
    assert f"{oracle['box3d'].mean():9.5f}" in stdout and f"{oracle['model'].mean():9.5f}" in stdout
    if model == "box3d":  # the anchor row against itself
        assert report["difference"]["mean"] == 0 and report["states_worse_than_box3d"] == 0
        assert report["difference"]["ci95"] == [0.0, 0.0]


@pytest.mark.parametrize("case", [
    dict(n=1), dict(n=2), dict(n=7, stddev=True), dict(n=40, extra=True),
    dict(n=12, nubar_heavy=True), dict(n=9, zero_species=True), dict(n=15, mu_tau_split=0.02),
    dict(n=10, nan_growth=True), dict(n=6, no_growth=True), dict(n=5, nf=None)])
@pytest.mark.parametrize("model", ["default", "box3d"])
def test_synthetic_files_scored_as_defined(capsys, tmp_path, case, model):
    case = dict(case)
    n = case.pop("n")
    options = {key: case.pop(key) for key in ("stddev", "extra", "nf") if key in case}
    nan_growth, no_growth = case.pop("nan_growth", False), case.pop("no_growth", False)
    emu_initial, emu_final = synthetic_states(100 + n, n, **case)
    growth = None if no_growth else np.random.default_rng(n).uniform(1e9, 1e11, n)
    if nan_growth:
        growth[::3] = np.nan
        growth[1] = -1.0
        growth[2] = 0.0
    path = write_emu(tmp_path / "syn.h5", emu_initial, emu_final, growth, **options)
    report, _, err = score_json(capsys, tmp_path, model, path)
    assert "warning" not in err  # the synthetic truth conserves what it must
    oracle = oracle_report(emu_initial, emu_final, None if model == "default" else model, growth)
    assert report["n_scored"] == n
    assert_matches_oracle(report, oracle)
    assert ("growth_rate" in report) == (growth is not None)


def test_mu_tau_averaged_before_the_difference(capsys, tmp_path):
    """Truth with mu != tau: the score is the averaged one, and swapping mu and tau changes nothing."""
    emu_initial, emu_final = synthetic_states(7, 20, mu_tau_split=0.03)
    swapped = emu_final[..., [0, 2, 1]]
    a, _, _ = score_json(capsys, tmp_path, "box3d", write_emu(tmp_path / "a.h5", emu_initial, emu_final))
    b, _, _ = score_json(capsys, tmp_path, "box3d", write_emu(tmp_path / "b.h5", emu_initial, swapped))
    np.testing.assert_allclose(a["per_state"]["model"], b["per_state"]["model"], rtol=1e-12)
    F_box = np.asarray(dodo.box3d(emu_to_species(emu_initial)).F_box)
    averaged = oracle_errors(emu_initial, emu_final, F_box)
    unaveraged = oracle_errors(emu_initial, emu_final, F_box, average=False)
    assert np.all(unaveraged > averaged * 1.5)  # the test can tell the two apart
    np.testing.assert_allclose(a["per_state"]["model"], averaged, rtol=1e-10)


def test_several_files_pooled_over_states(capsys, tmp_path):
    """Three files of 3, 11 and 2 states: one mean over the 16 states (not a mean of file means)."""
    parts = [synthetic_states(seed, n, nubar_heavy=seed == 2) for seed, n in ((1, 3), (2, 11), (3, 2))]
    growths = [np.random.default_rng(i).uniform(1e9, 1e11, len(p[0])) for i, p in enumerate(parts)]
    files = [write_emu(tmp_path / f"p{i}.h5", *p, g) for i, (p, g) in enumerate(zip(parts, growths))]
    report, stdout, _ = score_json(capsys, tmp_path, "default", *files)
    emu_initial = np.concatenate([p[0] for p in parts])
    emu_final = np.concatenate([p[1] for p in parts])
    oracle = oracle_report(emu_initial, emu_final, None, np.concatenate(growths))
    assert report["n_states"] == 16
    assert_matches_oracle(report, oracle)
    file_means = np.mean([oracle["model"][a:b].mean() for a, b in ((0, 3), (3, 14), (14, 16))])
    assert abs(file_means - oracle["model"].mean()) > 1e-6 * oracle["model"].mean()
    origins = report["per_state"]["origin"]
    assert origins[0] == f"{files[0]}#0" and origins[3] == f"{files[1]}#0" and origins[15] == f"{files[2]}#1"
    for w in report["worst_states"]:
        assert w["origin"] == origins[w["index"]]


def test_bootstrap_is_a_reproducible_percentile_bootstrap_over_states(capsys, tmp_path):
    emu_initial, emu_final = synthetic_states(11, 30, mu_tau_split=0.01)
    path = write_emu(tmp_path / "s.h5", emu_initial, emu_final)
    first, _, _ = score_json(capsys, tmp_path, "default", path, bootstrap=4000, seed=5)
    again, _, _ = score_json(capsys, tmp_path, "default", path, bootstrap=4000, seed=5)
    other, _, _ = score_json(capsys, tmp_path, "default", path, bootstrap=4000, seed=6)
    for name in ("model", "box3d", "difference"):
        assert first[name]["ci95"] == again[name]["ci95"]
    assert first["model"]["ci95"] != other["model"]["ci95"]
    values = {"model": np.array(first["per_state"]["model"]), "box3d": np.array(first["per_state"]["box3d"])}
    values["difference"] = values["model"] - values["box3d"]
    for name, v in values.items():
        low, high = first[name]["ci95"]
        assert v.min() <= low <= v.mean() <= high <= v.max()
        # the same statistic by an independent percentile bootstrap: equal to within its Monte-Carlo noise
        ref_low, ref_high = percentile_bootstrap(v, 4000, seed=1234)
        spread = v.std(ddof=1) / np.sqrt(len(v))
        assert abs(low - ref_low) < 0.25 * spread and abs(high - ref_high) < 0.25 * spread, (name, low, ref_low)
        # a 95% interval of a mean is about +-1.96 standard errors wide
        assert 2 * 1.6 * spread < high - low < 2 * 2.4 * spread


@pytest.mark.parametrize("resamples", [100, 20000])
def test_bootstrap_sizes_cover_the_mean(capsys, tmp_path, resamples):
    emu_initial, emu_final = synthetic_states(12, 25)
    path = write_emu(tmp_path / "s.h5", emu_initial, emu_final)
    report, _, _ = score_json(capsys, tmp_path, "box3d", path, bootstrap=resamples, seed=3)
    v = np.array(report["per_state"]["box3d"])
    low, high = report["box3d"]["ci95"]
    assert v.min() <= low <= v.mean() <= high <= v.max()


def test_one_state_interval_is_that_state(capsys, tmp_path):
    emu_initial, emu_final = synthetic_states(13, 1)
    report, _, _ = score_json(capsys, tmp_path, "default", write_emu(tmp_path / "one.h5", emu_initial, emu_final))
    for name in ("model", "box3d"):
        assert report[name]["ci95"][0] == report[name]["ci95"][1] == pytest.approx(report[name]["mean"], rel=1e-12)


def test_empty_state_left_out_and_the_rest_scored_as_defined(capsys, tmp_path):
    emu_initial, emu_final = synthetic_states(14, 8)
    emu_initial[3] = 0.0
    emu_final[3] = 0.0
    report, stdout, _ = score_json(capsys, tmp_path, "default", write_emu(tmp_path / "z.h5", emu_initial, emu_final))
    keep = np.arange(8) != 3
    oracle = oracle_report(emu_initial[keep], emu_final[keep], None)
    assert report["n_scored"] == 7 and report["left_out"]["indices"] == [3]
    assert report["per_state"]["model"][3] is None
    model = np.array([e for e in report["per_state"]["model"] if e is not None])
    np.testing.assert_allclose(model, oracle["model"], rtol=1e-10)
    assert report["model"]["mean"] == pytest.approx(oracle["model"].mean(), rel=1e-10)
    assert "7 of 8" in stdout and "N_tot <= 0" in stdout


@pytest.mark.parametrize("drop", [FINAL, INITIAL])
def test_missing_dataset_refused_naming_it(capsys, tmp_path, drop):
    emu_initial, emu_final = synthetic_states(15, 4)
    path = write_emu(tmp_path / "m.h5", emu_initial, emu_final)
    with h5py.File(path, "a") as f:
        del f[drop]
    code, _, err = run(capsys, ["score", "box3d", str(path)])
    assert code == 2 and "Traceback" not in err and drop in err and str(path) in err


def test_two_flavour_file_refused_in_one_line(capsys, tmp_path):
    emu_initial, emu_final = synthetic_states(16, 4)
    path = write_emu(tmp_path / "nf2.h5", emu_initial[..., :2], emu_final[..., :2], nf=2)
    code, _, err = run(capsys, ["score", "box3d", str(path)])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err and "three flavours" in lines[0]


def test_validate_density_error_is_the_metric():
    """dodo.qke.validate's metric (emu32's and nsm1's numbers) against the oracle."""
    from dodo.qke.validate import density_error

    emu_initial, emu_final = synthetic_states(17, 13, mu_tau_split=0.02, nubar_heavy=True)
    F_init = emu_to_species(emu_initial)
    F_box = np.asarray(dodo.box3d(F_init).F_box)
    np.testing.assert_allclose(density_error(F_box, emu_to_species(emu_final), F_init),
                               oracle_errors(emu_initial, emu_final, F_box), rtol=1e-12)


def _emu32_reference(path, n=5):
    emu_initial, emu_final = synthetic_states(18, n, mu_tau_split=0.01)
    growth = np.random.default_rng(2).uniform(1e9, 1e11, n)
    with h5py.File(path, "w") as f:
        f[INITIAL], f[FINAL], f[GROWTH] = emu_initial, emu_final, growth
        f["linear_growthRate_box(1|s)"] = growth * 1.1
        f["tend(s)"] = np.full(n, 1e-9)
        f["walltime(s)"] = np.full(n, 60.0)
        f["rotation_R"] = np.tile(np.eye(3), (n, 1, 1))
    return emu_initial, emu_final, growth


@pytest.mark.parametrize("valid", [[1, 0, 1, 1, 0], [0, 0, 0, 0, 0]])
def test_validate_emu32_statistics_over_valid_states(monkeypatch, capsys, tmp_path, valid):
    """emu32's summary (the solver stubbed: its answer is Box3D's, moved): means over the valid states,
    as the metric defines them; with no valid state, a report of nulls and exit 1, not NumPy's
    "zero-size array to reduction operation maximum" after the whole run, with no report written."""
    import dodo.qke.campaign as campaign
    from dodo.qke import validate

    reference = tmp_path / "ref.h5"
    emu_initial, emu_final, growth = _emu32_reference(reference)
    valid = np.array(valid, bool)
    F_init = emu_to_species(emu_initial)
    solver_final = np.asarray(dodo.box3d(F_init).F_box) * 1.0
    solver_final[:, 0, 0] *= 1.01
    rates = growth * np.linspace(0.9, 1.2, len(growth))

    def stub(four_flux, output, config, **kwargs):
        return {"final": solver_final, "valid": valid, "growth_rate": rates, "linear_growth_rate": growth * 1.1}

    monkeypatch.setattr(campaign, "simulate_states", stub)
    report_path = tmp_path / "report.json"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NumPy's "Mean of empty slice" fails here
        code = validate.main(["emu32", "--reference", str(reference), "--output", str(tmp_path / "out.h5"),
                              "--json", str(report_path)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "zero-size" not in err
    report = json.loads(report_path.read_text())
    assert report["nvalid"] == int(valid.sum())
    if valid.any():
        assert code == 0
        errors = oracle_errors(emu_initial, emu_final, solver_final)
        box = oracle_errors(emu_initial, emu_final, np.asarray(dodo.box3d(F_init).F_box))
        assert report["solver_vs_emu_mean_abs_dn_over_ntot"] == pytest.approx(errors[valid].mean(), rel=1e-12)
        assert report["solver_vs_emu_max"] == pytest.approx(errors[valid].max(), rel=1e-12)
        assert report["box3d_vs_emu_mean_abs_dn_over_ntot"] == pytest.approx(box[valid].mean(), rel=1e-12)
        ratio = rates[valid] / growth[valid]
        assert report["growth_rate_ratio_to_emu"]["min"] == pytest.approx(ratio.min())
        assert report["growth_rate_ratio_to_emu"]["max"] == pytest.approx(ratio.max())
    else:
        assert code == 1 and "none of the 5 states" in err
        assert report["solver_vs_emu_mean_abs_dn_over_ntot"] is None and report["solver_vs_emu_max"] is None


class _RatesSpoiled:
    """A closure whose learned rate is NaN on state 0 and inf on state 1 (a user's model can say so)."""

    def __init__(self, spoil_all=False):
        self.closure = dodo.Closure(None)
        self.box3d_settings = self.closure.box3d_settings
        self.spoil_all = spoil_all

    def apply(self, F):
        import types

        result = self.closure.apply(F)
        rate = np.array(result.growth_rate, float)
        rate[0], rate[1] = np.nan, np.inf
        if self.spoil_all:
            rate[:] = np.nan
        return types.SimpleNamespace(F_pred=result.F_pred, status=result.status, growth_rate=rate,
                                     growth_rate_proxy=result.growth_rate_proxy, uncertainty=result.uncertainty)


@pytest.mark.parametrize("spoil_all", [False, True])
def test_growth_share_counts_a_non_finite_rate_as_not_within(tmp_path, spoil_all):
    """The share within 10% is over every state with a measured rate: 8 of 10 right and 2 NaN/inf
    rates is 80%, not 100% (the non-finite ones were dropped from the denominator)."""
    from dodo.score import format_report, read_emu_states, score

    emu_initial, emu_final = synthetic_states(21, 10)
    states = read_emu_states(str(write_emu(tmp_path / "g.h5", emu_initial, emu_final, np.ones(10))))
    states.growth_rate = np.array(dodo.Closure(None).apply(states.F_init).growth_rate, float)  # exact, measured
    report = score(_RatesSpoiled(spoil_all), states, resamples=200)
    model = report["growth_rate"]["model"]
    assert report["growth_rate"]["n_states"] == 10
    assert model["within_10_percent"] == (0.0 if spoil_all else pytest.approx(0.8))
    assert model["non_finite"] == (10 if spoil_all else 2)
    text = format_report(report, "m", "d")
    assert ("within 10%: 80%" in text) != spoil_all and "non-finite rate on" in text
    json.dumps(report, allow_nan=False)


def test_float32_file_growth_column_threshold_zero_and_non_conserving_truth(capsys, tmp_path):
    """float32 datasets and a [n, 1] growthRate are read as the same numbers; a truth that breaks
    conservation is warned of and scored as given (the distance to it); --threshold 0 counts every
    state where the model's error exceeds Box3D's."""
    emu_initial, emu_final = synthetic_states(22, 12, nubar_heavy=True)
    emu_final[4, 3, 0, 0] *= 1.2  # nu_e of state 4 made up: conservation broken
    emu_final = emu_final.astype(np.float32).astype(float)  # the numbers the file holds
    emu_initial = emu_initial.astype(np.float32).astype(float)
    growth = np.random.default_rng(3).uniform(1e9, 1e11, 12)
    path = tmp_path / "f32.h5"
    with h5py.File(path, "w") as f:
        f[INITIAL] = emu_initial.astype(np.float32)
        f[FINAL] = emu_final.astype(np.float32)
        f[GROWTH] = growth[:, None]
    report, _, err = score_json(capsys, tmp_path, "default", path, extra=("--threshold", "0"))
    assert "1 of 12 states have a truth" in err
    oracle = oracle_report(emu_initial, emu_final, None, growth, threshold=0.0)
    assert_matches_oracle(report, oracle)
    assert report["states_worse_than_box3d"] == int(np.sum(oracle["difference"] > 0))


def test_anchor_row_says_when_its_box3d_is_not_the_default(tmp_path):
    """The Box3D row is the model's own prior; with other settings than dodo.box3d's defaults (the
    README's anchor) the report says so and records them (JSON box3d_settings), and the row is Box3D
    at those settings (the oracle's); with the defaults, no such note."""
    from dodo.score import format_report, read_emu_states, score

    emu_initial, emu_final = synthetic_states(23, 6)
    states = read_emu_states(str(write_emu(tmp_path / "a.h5", emu_initial, emu_final)))
    plain = score(dodo.Closure("box3d"), states, resamples=200)
    assert plain["box3d_settings"]["lebedev_order"] == 17 and "notes" not in plain
    other = dodo.Closure("box3d", lebedev_order=41)
    report = score(other, states, resamples=200)
    assert report["box3d_settings"]["lebedev_order"] == 41
    text = format_report(report, "m", "d")
    assert "lebedev_order 41" in text and "not Dodo's default (17, exact, 0.98)" in text
    F_box = np.asarray(dodo.box3d(emu_to_species(emu_initial), lebedev_order=41).F_box)
    np.testing.assert_allclose(report["per_state"]["box3d"], oracle_errors(emu_initial, emu_final, F_box), rtol=1e-10)
    json.dumps(report, allow_nan=False)
