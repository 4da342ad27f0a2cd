"""`dodo reference`: Box3D over the reference cases shipped with Dodo, as a table.

Prints, per case: N_tot, the growth-rate proxy, the mu/tau-averaged number densities before
and after (in units of N_tot), the largest conservation error (flavour-summed four-flux and
per-flavour lepton number, units of N_tot), the largest deviation from the reference F_box and
from Emu's own asymptotic state where the case has one.
"""
from __future__ import annotations

import json
from importlib import resources

import numpy as np

from ._box3d import box3d, comoving_density
from ._status import CellStatus


def load_reference_cases() -> list[dict]:
    """The cases of box3d_cases.json shipped in dodo/data (inputs and expected Box3D outputs)."""
    text = resources.files("dodo").joinpath("data/box3d_cases.json").read_text(encoding="utf-8")
    return json.loads(text)["cases"]


def conservation_error(F_init: np.ndarray, F_out: np.ndarray, u=None) -> np.ndarray:
    """Largest violation of the 11 conservation laws per cell, in units of N_tot.

    Flavour-summed four-flux (nu and nubar separately) in any frame; per-flavour lepton
    number in the fluid rest frame. A cell whose N_tot is not positive has no unit to measure
    in: its error is 0. F_out must have F_init's shape (a single cell's F_init broadcast against
    a batch F_out and measured every cell against the first cell's input).
    """
    F_init = np.asarray(F_init, float)
    F_out = np.asarray(F_out, float)
    if F_out.shape != F_init.shape:  # outside probe, round 42
        raise ValueError(f"conservation_error: F_out has shape {F_out.shape}, F_init {F_init.shape}: give one output "
                         "cell per input cell")
    change = F_out - F_init
    ntot = comoving_density(F_init, u)
    velocity = np.broadcast_to(np.array([1.0, 0, 0, 0]) if u is None else np.asarray(u, float),
                               F_init.shape[:-2] + (4,))
    flavour_sum = np.abs(change.reshape(change.shape[:-2] + (2, 3, 4)).sum(axis=-2)).max(axis=(-1, -2))
    comoving_change = -(-change[..., 0] * velocity[..., None, 0] + np.einsum("...ai,...i->...a", change[..., 1:], velocity[..., 1:]))
    lepton = np.abs(comoving_change[..., :3] - comoving_change[..., 3:]).max(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ntot > 0, np.maximum(flavour_sum, lepton) / np.where(ntot > 0, ntot, 1), 0.0)


def stored_settings(cases: list[dict]) -> list[tuple[int, str]]:
    """(Lebedev order, Z method) pairs that have expected outputs in the reference file."""
    return sorted({(e["lebedev_order"], e["z_method"]) for case in cases for e in case["expected"]})


#: Largest deviation from a stored reference output, and largest conservation error (units of N_tot).
REFERENCE_TOLERANCE = 1e-9
CONSERVATION_TOLERANCE = 1e-12


def run(lebedev_order: int = 17, z_method: str = "exact") -> int:
    """Print the table; 0 when every comparison made passes, 1 when one fails. Defaults as
    dodo.box3d's. A setting without stored reference outputs says so instead of comparing."""
    from ._box3d import box3d_settings

    box3d_settings(lebedev_order=lebedev_order, z_method=z_method)  # ValueError for a bad setting
    cases = load_reference_cases()
    header = (f"{'case':<24}{'N_tot':>11}{'growth/N':>10}{'n_e':>8}{'n_x':>8}{'nb_e':>8}{'nb_x':>8}"
              f"{'->n_e':>8}{'->n_x':>8}{'->nb_e':>8}{'->nb_x':>8}{'conserv.':>10}{'vs ref':>10}{'vs Emu':>9}  status")
    print(f"Box3D (pairwise, delta form), Lebedev order {lebedev_order}, z_method {z_method}")
    print("densities in the fluid rest frame in units of N_tot; x = mu/tau average; errors in units of N_tot")
    print(header)
    print("-" * len(header))
    deviations, worst_conservation = [], 0.0
    for case in cases:
        F_init = np.array(case["F_init"], float)
        u = np.array(case["u"], float)
        result = box3d(F_init, u, lebedev_order=lebedev_order, z_method=z_method)
        ntot = float(comoving_density(F_init, u))
        scale = ntot if ntot > 0 else 1.0

        def rest_densities(F):
            W, spatial = u[0], u[1:]
            n = W * F[:, 0] - F[:, 1:] @ spatial
            return np.array([n[0], 0.5 * (n[1] + n[2]), n[3], 0.5 * (n[4] + n[5])]) / scale

        before, after = rest_densities(F_init), rest_densities(result.F_box)
        conservation = float(conservation_error(F_init, result.F_box, u))
        worst_conservation = max(worst_conservation, conservation)
        expected = [e for e in case["expected"] if e["lebedev_order"] == lebedev_order and e["z_method"] == z_method]
        if expected:
            deviations.append(float(np.abs(result.F_box - np.array(expected[0]["F_box"])).max() / scale))
            vs_reference = f"{deviations[-1]:>10.1e}"
        else:
            vs_reference = f"{'-':>10}"
        vs_emu = (f"{np.abs(result.F_box - np.array(case['emu_final'])).max() / scale:>9.4f}"
                  if "emu_final" in case else f"{'-':>9}")
        flags = CellStatus(int(result.status))
        print(f"{case['name']:<24}{ntot:>11.3e}{float(result.growth_over_ntot):>10.4f}"
              + "".join(f"{v:>8.4f}" for v in before) + "".join(f"{v:>8.4f}" for v in after)
              + f"{conservation:>10.1e}{vs_reference}{vs_emu}  {flags.name or 'OK'}")
    failed = worst_conservation > CONSERVATION_TOLERANCE
    print(f"largest conservation error: {worst_conservation:.2e} N_tot (tolerance {CONSERVATION_TOLERANCE:g})")
    if deviations:
        worst = max(deviations)
        failed |= worst > REFERENCE_TOLERANCE
        print(f"largest deviation from the reference outputs: {worst:.2e} N_tot over {len(deviations)} cases "
              f"(tolerance {REFERENCE_TOLERANCE:g})")
    else:
        stored = ", ".join(f"order {order} {method}" for order, method in stored_settings(cases))
        print(f"no reference outputs for order {lebedev_order} {z_method} (stored: {stored}): "
              "nothing compared ('vs ref' is '-')")
    if failed:
        print("FAILED: a comparison is outside its tolerance")
    return 1 if failed else 0
