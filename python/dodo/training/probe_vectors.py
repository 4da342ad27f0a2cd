"""Test vectors that make a package's self-test cover the settings a re-signed edit could change.

A package's self-test (docs/model_package.md) reruns its test vectors at load. The exporter draws
them among in-distribution crossing cells at moderate flux factors, where the out-of-distribution
gate is open and Box3D's flux-factor cap never acts: a package re-signed after its gate was
switched off (precision matrix zeroed, d2_max raised to 1e30) or its Box3D cap moved loaded as
tested (outside probes, Python rounds forty-eight and forty-nine). Here each such edit is made on
a copy of the package (a *mutant*, re-signed as an editor would), and for each one a probe cell is
chosen whose output it moves by far more than the vectors' tolerance; the probes are appended to
the package's test vectors, so that a package carrying any of these edits fails its self-test.

Probe cells lie at rest and outside both flavour-image bands (nubar_e above nu_e, tau above mu, by
more than the band), so the closure's answer is the package's network on the cell itself, which is
what the self-test evaluates (it runs without the images); ``add_probe_vectors`` checks this by
loading the result with its self-test and requiring the probes' own error to be zero.
"""
from __future__ import annotations

import json
from typing import Callable

import numpy as np

# A probe must move under its mutant by this many times the test vectors' tolerance.
KILL_MARGIN = 100.0
# The flavour-image band's half-width in units of N_tot (flavour_symmetry.hpp kImageBlendWidth),
# doubled: probes keep clear of it.
IMAGE_BAND_CLEARANCE = 0.02
# The cap-edge probes' relative distance from the package's flux-factor cap, one below it and one
# above: far above the flux factor's rounding (~1e-16 relative), so every CPU path classifies them
# alike, and far below any cap a user sets on purpose. A re-signed cap moved by more than this, up
# or down, changes one of them (outside probe, section 126: 0.98 -> 0.985 ... 0.9800001 loaded).
CAP_EDGE = 1e-9
# Crossing candidates copied to the cap's edges (two cells each).
CAP_EDGE_CANDIDATES = 64


def _edit_initializer(model, name: str, edit: Callable[[np.ndarray], np.ndarray]) -> bool:
    from onnx import numpy_helper

    for index, tensor in enumerate(model.graph.initializer):
        if tensor.name == name:
            new = numpy_helper.from_array(edit(numpy_helper.to_array(tensor)).astype(numpy_helper.to_array(tensor).dtype),
                                          name)
            model.graph.initializer[index].CopyFrom(new)
            return True
    return False


def _edit_metadata_json(model, key: str, edit: Callable[[dict], None]) -> bool:
    for entry in model.metadata_props:
        if entry.key == key:
            value = json.loads(entry.value)
            edit(value)
            entry.value = json.dumps(value)
            return True
    return False


def _scaled_scalar(model, initializer: str, native_key: str, factor: float) -> bool:
    """Scales a gate constant in the graph and, where the native network's description repeats it,
    there too (the loader requires the two to agree)."""
    if not _edit_initializer(model, initializer, lambda value: value * factor):
        return False

    def scale(native: dict) -> None:
        if native_key in native:
            native[native_key] = float(np.float32(native[native_key] * factor))

    _edit_metadata_json(model, "dodo.native_network", scale)
    return True


def native_form_was_v2(model) -> bool:
    """Whether the graph gates the growth ratio (the output is made by a Mul: the ratio times the
    distance gate), as packages of native form v2 do: the downgrade applies only there."""
    return any(node.op_type == "Mul" and "log_growth_ratio" in node.output for node in model.graph.node)


def package_cap(package: bytes) -> float | None:
    """The package's Box3D flux-factor cap (metadata "dodo.box3d" max_flux_factor), None if it names none."""
    import onnx

    entries = {entry.key: entry.value for entry in onnx.load_from_string(package).metadata_props}
    cap = json.loads(entries.get("dodo.box3d", "{}")).get("max_flux_factor")
    return float(cap) if isinstance(cap, (int, float)) and not isinstance(cap, bool) else None


def mutants(package: bytes) -> list[tuple[str, bytes]]:
    """(name, re-signed package bytes) for each edit of a gate or Box3D setting that applies to
    ``package``; edits the package has no place for are left out."""
    import onnx

    from .. import _core

    cap = package_cap(package)

    def box3d_cap(value: float):
        def edit(model):
            return _edit_metadata_json(model, "dodo.box3d", lambda box: box.__setitem__("max_flux_factor", value))
        return edit

    edits = [
        ("the gate's precision matrix zeroed",
         lambda model: _edit_initializer(model, "ensemble.feature_precision", np.zeros_like)),
        ("the gate's d2_max raised to 1e30", lambda model: _scaled_scalar(model, "ensemble.d2_max", "d2_max", 1e30)),
        ("the gate's d2_max doubled", lambda model: _scaled_scalar(model, "ensemble.d2_max", "d2_max", 2.0)),
        ("the gate's d2_max halved", lambda model: _scaled_scalar(model, "ensemble.d2_max", "d2_max", 0.5)),
        ("the gate's feature mean shifted", lambda model: _edit_initializer(
            model, "ensemble.feature_mean", lambda mean: mean + 0.5 * np.abs(mean) + 0.05)),
        ("Box3D's max_flux_factor set to 0.5", box3d_cap(0.5)),
        ("Box3D's max_flux_factor set to 0.9", box3d_cap(0.9)),
        ("Box3D's max_flux_factor set to 0.97", box3d_cap(0.97)),
        ("Box3D's max_flux_factor set to 0.999", box3d_cap(0.999)),
        # The smallest moves the cap-edge probes are made for (cap_edge_cells).
        *([] if cap is None else [
            (f"Box3D's max_flux_factor raised by {2 * CAP_EDGE:g} of itself", box3d_cap(cap * (1 + 2 * CAP_EDGE))),
            (f"Box3D's max_flux_factor lowered by {2 * CAP_EDGE:g} of itself", box3d_cap(cap * (1 - 2 * CAP_EDGE)))]),
        # The native evaluator's form downgraded: it would return the growth ratio ungated where the
        # graph gates it (both forms load; physics-law probe, round thirteen).
        ("the native form set to v1 (growth ungated)", lambda model: native_form_was_v2(model) and _edit_metadata_json(
            model, "dodo.native_network", lambda native: native.__setitem__("form", "silu-mlp-density-residual-v1"))),
    ]
    out = []
    for name, edit in edits:
        model = onnx.load_from_string(package)
        if edit(model):
            out.append((name, _core.with_content_digest(model.SerializeToString())))
    return out


def candidate_cells(n: int = 4000, seed: int = 20261206) -> np.ndarray:
    """Crossing candidates at rest ([n, 6, 4], units of N_tot ~ 1): random states with flux factors
    up to 0.995 (beyond a package's cap, too: a raised cap must show), a quarter of them with species
    spanning many decades (far from the training data), all with nubar_e > nu_e and tau > mu by more
    than the image band."""
    from .synth import random_initial_states

    rng = np.random.default_rng(seed)
    F = random_initial_states(rng, n, max_flux_factor=0.995, heavy_symmetric=False, scale_min=1.0, scale_max=1.0)
    far = np.arange(n) % 4 == 0
    F[far] *= (10.0 ** rng.choice([0, -1, -2, -4, -8], (int(far.sum()), 6)))[..., None]
    # Outside both image bands: nubar_e denser than nu_e, the tau pair denser than the mu pair.
    ntot = F[:, :, 0].sum(-1)
    F[:, 3] *= np.maximum(1.0, (F[:, 0, 0] + 2 * IMAGE_BAND_CLEARANCE * ntot) / F[:, 3, 0])[:, None]
    ntot = F[:, :, 0].sum(-1)
    tau, mu = F[:, 2, 0] + F[:, 5, 0], F[:, 1, 0] + F[:, 4, 0]
    F[:, [2, 5]] *= np.maximum(1.0, (mu + 2 * IMAGE_BAND_CLEARANCE * ntot) / tau)[:, None, None]
    return F


def cap_edge_cells(cells: np.ndarray, cap: float, count: int = CAP_EDGE_CANDIDATES) -> np.ndarray:
    """Two copies of each of the first ``count`` candidates whose species all lie well inside the cap
    (flux factor below 0.9 cap), with nu_e's flux rescaled to flux factor cap (1 - CAP_EDGE) (corrected
    as usual; flagged FLUX_FACTOR and returned as given under any lower cap) and cap (1 + CAP_EDGE)
    (flagged and returned as given; corrected under any higher cap). Cells at rest, so the flux
    factor the closure compares is the one set here, to rounding."""
    flux_factor = np.linalg.norm(cells[:, :, 1:], axis=-1) / cells[:, :, 0]
    inside = np.flatnonzero(np.all(flux_factor < 0.9 * cap, axis=1) & (flux_factor[:, 0] > 0))[:count]
    edges = []
    for factor in (cap * (1 - CAP_EDGE), cap * (1 + CAP_EDGE)):
        F = cells[inside].copy()
        F[:, 0, 1:] *= (factor / flux_factor[inside, 0])[:, None]
        edges.append(F)
    return np.concatenate(edges)


def choose_probes(package: bytes, cells: np.ndarray, atol_over_ntot: float) -> tuple[list[int], dict]:
    """Indices of probe cells (one per mutant the cells can catch) and, per mutant name, the
    largest change (units of N_tot) a cell shows under it, or None where the mutant does not load."""
    import dodo

    reference = dodo.Closure(package, threads=1).apply(cells)
    ntot = cells[:, :, 0].sum(-1)
    # Any cell but one whose network output is not finite (the self-test refuses those); a cell the
    # package rejects (flux factor past its cap) is a probe of a raised cap.
    usable = (reference.status & int(dodo.CellStatus.NETWORK_NONFINITE)) == 0
    chosen, report = [], {}
    for name, mutant in mutants(package):
        try:
            changed = dodo.Closure(mutant, threads=1, self_test=False).apply(cells)
        except (RuntimeError, ValueError):
            report[name] = None  # refused at load already
            continue
        change = np.abs(changed.F_pred - reference.F_pred).max(axis=(-1, -2)) / ntot
        # The growth rate too (units of N_tot, as the self-test compares it): an edit can move it alone.
        change = np.maximum(change, np.abs(changed.growth_over_ntot - reference.growth_over_ntot))
        change = np.where(usable & np.isfinite(change), change, 0.0)
        best = int(np.argmax(change))
        report[name] = float(change[best])
        if change[best] > KILL_MARGIN * atol_over_ntot and best not in chosen:
            chosen.append(best)
    return chosen, report


def without_vectors_after(package: bytes, kept: int) -> bytes:
    """The package with only its first `kept` test vectors, re-signed (ValueError if it has fewer, or
    kept < 1): add_probe_vectors then makes the probes again with this runtime's outputs."""
    import onnx

    from .. import _core

    model = onnx.load_from_string(package)
    entries = {entry.key: entry for entry in model.metadata_props}
    vectors = json.loads(entries["dodo.test_vectors"].value)
    held = len(vectors["F_init"])
    if not 1 <= kept <= held:
        raise ValueError(f"cannot keep {kept} test vectors: the package holds {held}")
    vectors = {key: value[:kept] if isinstance(value, list) else value for key, value in vectors.items()}
    entries["dodo.test_vectors"].value = json.dumps(vectors)
    return _core.with_content_digest(model.SerializeToString())


def add_probe_vectors(package: bytes, cells: np.ndarray | None = None) -> tuple[bytes, dict]:
    """The package with probe cells appended to its test vectors, re-signed; and a report: per
    mutant, the largest change a candidate showed and whether the new package's self-test refuses
    it. Raises ValueError if the probes do not reproduce exactly through the self-test."""
    import onnx

    import dodo

    from .. import _core

    cells = candidate_cells() if cells is None else cells
    cap = package_cap(package)
    if cap is not None:  # the candidates at the cap's edges after the others: earlier picks stay the same
        cells = np.concatenate([cells, cap_edge_cells(cells, cap)])
    model = onnx.load_from_string(package)
    entries = {entry.key: entry for entry in model.metadata_props}
    vectors = json.loads(entries["dodo.test_vectors"].value)
    picked, changes = choose_probes(package, cells, vectors["atol_over_ntot"])
    # Cells the package holds already (probes an earlier run appended, picked again): not twice, so
    # that a probed package gains only the probes of edits it did not catch.
    held = np.asarray(vectors["F_init"], dtype=float).reshape(-1, *cells.shape[1:])
    picked = [i for i in picked if not any(np.array_equal(cells[i], cell) for cell in held)]
    if picked:
        probes = cells[picked]
        result = dodo.Closure(package, threads=1).apply(probes)
        vectors["F_init"] += probes.tolist()
        vectors["u"] += [[1.0, 0.0, 0.0, 0.0]] * len(picked)
        vectors["F_pred"] += result.F_pred.tolist()
        if "growth_over_ntot" in vectors:
            vectors["growth_over_ntot"] += result.growth_over_ntot.tolist()
        if "uncertainty" in vectors:
            vectors["uncertainty"] += result.uncertainty.tolist()
        entries["dodo.test_vectors"].value = json.dumps(vectors)
        new_package = _core.with_content_digest(model.SerializeToString())
        # The exporter's vectors come from its float64 reference (the evaluator lies ~1e-8 from it);
        # the probes from this evaluator itself: they must add no error of their own.
        worst_before = dodo.Closure(package, threads=1).self_test()
        worst = dodo.Closure(new_package, threads=1).self_test()
        if worst > worst_before:
            raise ValueError(f"the probes do not reproduce through the self-test ({worst:.3g} N_tot against "
                             f"{worst_before:.3g} before them)")
    else:  # no edit applies, none moves a candidate, or the package holds the probes: the package as it is
        new_package, worst = package, None
    report = {}
    for name, mutant in mutants(new_package):
        try:
            dodo.Closure(mutant, threads=1)
            refused = False
        except (RuntimeError, ValueError):
            refused = True
        report[name] = {"largest_change_over_ntot": changes.get(name), "refused": refused}
    return new_package, {"probes": len(picked), "mutants": report, "self_test_worst": worst}
