"""The bad-input corpus (issue 5), generated: cells and calls that a host code may hand to Dodo.

``value_cases()``: single cells (F (6, 4), u (4,) or None) that every API must accept and answer
with a finite, realizable output and, for rejected input, a flag. ``python_error_cases()``:
calls that dodo.box3d/dodo.Closure.apply must refuse with an exception naming the problem.
``is_finite_realizable`` is the acceptance check; ``write_table`` renders the outcomes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

SPECIES = ("nu_e", "nu_mu", "nu_tau", "nubar_e", "nubar_mu", "nubar_tau")
COMPONENTS = ("t", "x", "y", "z")
REJECTED = {"FLUX_FACTOR": 2, "NEGATIVE_DENSITY": 4, "NONFINITE": 8, "ZERO_DENSITY": 16, "BAD_VELOCITY": 32}


@dataclass
class ValueCase:
    name: str            # unique
    group: str           # rows of the table aggregate a group
    F: np.ndarray        # (6, 4)
    u: Optional[np.ndarray]
    expect: Optional[str] = None  # a rejection flag the cell must carry (None: any outcome, checked for validity)
    python_raises: bool = False    # dodo's Python API refuses the u of this case (C and Fortran flag it)
    unchanged: bool = False        # the (finite, realizable, rejected) input must come back bit for bit


@dataclass
class ErrorCase:
    name: str
    call: Callable[[Callable], object]  # takes the API function (F, u) -> result
    error: type
    words: tuple[str, ...]               # words the message must contain (case-insensitive)
    group: str = field(default="")


def physical_cell(scale: float = 1.0) -> np.ndarray:
    """A realizable cell with an ELN crossing (nu_e forward, nubar_e backward)."""
    F = np.zeros((6, 4))
    F[:, 0] = [1.0, 0.5, 0.5, 0.8, 0.3, 0.3]
    F[0, 3] = 0.4
    F[3, 3] = -0.5
    F[1, 1] = 0.1
    F[4, 2] = -0.1
    return F * scale


def boosted(speed: float) -> np.ndarray:
    W = 1.0 / np.sqrt(1.0 - speed**2)
    return np.array([W, W * speed, 0.0, 0.0])


def value_cases() -> list[ValueCase]:
    cases: list[ValueCase] = []
    add = cases.append
    add(ValueCase("physical", "control: physical cell at rest", physical_cell(), None))
    add(ValueCase("physical_moving", "control: physical cell, v = 0.9", physical_cell(), boosted(0.9)))
    # NaN / +Inf / -Inf in every component of F and of u.
    for label, bad in (("nan", np.nan), ("inf", np.inf), ("-inf", -np.inf)):
        for a in range(6):
            for m in range(4):
                F = physical_cell()
                F[a, m] = bad
                add(ValueCase(f"{label}_F[{SPECIES[a]},{COMPONENTS[m]}]", f"{label} in one component of F (24 cases)",
                              F, boosted(0.3), expect="NONFINITE"))
        for m in range(4):
            u = boosted(0.3)
            u[m] = bad
            add(ValueCase(f"{label}_u[{COMPONENTS[m]}]", f"{label} in one component of u (4 cases)", physical_cell(), u,
                          expect="NONFINITE"))
    F = np.full((6, 4), np.nan)
    add(ValueCase("all_nan", "all of F NaN", F, None, expect="NONFINITE"))
    # Negative densities.
    F = physical_cell()
    F[1, 0] = -0.1
    add(ValueCase("negative_density", "negative density, one species", F, None, expect="NEGATIVE_DENSITY"))
    F = physical_cell()
    F[3, 0] = -0.8
    add(ValueCase("negative_density_with_flux", "negative density with flux, v = 0.5", F, boosted(0.5),
                  expect="NEGATIVE_DENSITY"))
    add(ValueCase("all_negative", "all densities negative", -physical_cell(), None, expect="NEGATIVE_DENSITY"))
    F = physical_cell()
    F[1, 0] = -1e-300
    add(ValueCase("negative_tiny", "density -1e-300", F, None, expect="NEGATIVE_DENSITY"))
    # |F| > n, and flux factors at the edge.
    F = physical_cell()
    F[0, 1:] = [1.0, 1.0, 1.0]
    add(ValueCase("flux_above_density", "|F| > n, one species", F, None, expect="FLUX_FACTOR"))
    F = physical_cell()
    F[:, 1] = 2.0 * F[:, 0]
    add(ValueCase("flux_above_density_all", "|F| > n, all species", F, boosted(0.3), expect="FLUX_FACTOR"))
    F = physical_cell()
    F[0, 1:] = [0.0, 0.0, 0.99]
    add(ValueCase("flux_factor_0.99", "flux factor 0.99 (realizable, above the 0.98 limit)", F, None,
                  expect="FLUX_FACTOR", unchanged=True))
    F = physical_cell()
    F[0, 1:] = [0.0, 0.0, 1.0]
    add(ValueCase("flux_factor_1", "flux factor exactly 1", F, None, expect="FLUX_FACTOR", unchanged=True))
    F = physical_cell()
    F[2] = [0.0, 0.3, 0.0, 0.0]
    add(ValueCase("flux_without_density", "n = 0 with F != 0", F, None, expect="FLUX_FACTOR"))
    # Zero and single-species cells.
    add(ValueCase("zero_cell", "all zeros", np.zeros((6, 4)), None, expect="ZERO_DENSITY", unchanged=True))
    add(ValueCase("zero_cell_moving", "all zeros, v = 0.5", np.zeros((6, 4)), boosted(0.5), expect="ZERO_DENSITY",
                  unchanged=True))
    for a in (0, 4):
        F = np.zeros((6, 4))
        F[a] = [1.0, 0.0, 0.3, 0.0]
        add(ValueCase(f"single_species_{SPECIES[a]}", "single species (nu_e or nubar_mu)", F, None))
        add(ValueCase(f"single_species_{SPECIES[a]}_moving", "single species, v = 0.6", F, boosted(0.6)))
    F = np.zeros((6, 4))
    F[0, 0] = 1.0
    add(ValueCase("single_species_isotropic", "single isotropic species", F, None))
    # Scales from subnormal to the edge of the double range.
    for scale in (5e-324, 1e-310, 1e-300, 1e-200, 1e-30, 1e33, 1e200, 1e300, 1e307):
        add(ValueCase(f"scale_{scale:g}", "densities scaled by 5e-324 ... 1e307", physical_cell(scale), None))
        add(ValueCase(f"scale_{scale:g}_moving", "same, v = 0.9", physical_cell(scale), boosted(0.9)))
    add(ValueCase("scale_1e308", "densities 1e308 (N_tot overflows)", physical_cell(1e308), None,
                  expect="NONFINITE", unchanged=True))
    add(ValueCase("scale_1e308_moving", "densities 1e308, v = 0.9 (boost overflows)", physical_cell(1e308),
                  boosted(0.9), expect="NONFINITE", unchanged=True))
    F = physical_cell()
    F[:3] *= 1e300
    F[3:] *= 1e-300
    add(ValueCase("mixed_1e300_1e-300", "neutrinos 1e300, antineutrinos 1e-300", F, None))
    # Four-velocities that are not future-directed unit timelike vectors.
    for name, u in (("u_not_normalised", np.array([2.0, 0.0, 0.0, 0.0])),
                    ("u_spacelike", np.array([0.5, 1.0, 0.0, 0.0])),
                    ("u_null", np.array([1.0, 1.0, 0.0, 0.0])),
                    ("u_past_directed", np.array([-1.0, 0.0, 0.0, 0.0])),
                    ("u_zero", np.zeros(4)),
                    ("u_huge_W", np.array([1e200, 1e200, 0.0, 0.0]))):
        add(ValueCase(name, "u not normalised, spacelike, null, past-directed, zero, W = 1e200", physical_cell(), u,
                      expect="BAD_VELOCITY", python_raises=True, unchanged=True))
    F = physical_cell()
    F[1, 0] = -0.1
    add(ValueCase("u_spacelike_and_negative_density", "bad u and negative density", F, np.array([0.5, 1.0, 0.0, 0.0]),
                  expect="BAD_VELOCITY", python_raises=True))
    add(ValueCase("u_ultrarelativistic", "v = 1 - 1e-12 (W = 7e5)", physical_cell(), boosted(1.0 - 1e-12)))
    return cases


def python_error_cases() -> list[ErrorCase]:
    F = physical_cell()
    u = boosted(0.3)
    shape_words = ("F_init", "shape")
    return [
        ErrorCase("F shape (6, 3)", lambda f: f(F[:, :3], None), ValueError, shape_words, "wrong shape"),
        ErrorCase("F shape (5, 4)", lambda f: f(F[:5], None), ValueError, shape_words, "wrong shape"),
        ErrorCase("F shape (4,)", lambda f: f(F[0], None), ValueError, shape_words, "wrong shape"),
        ErrorCase("F scalar", lambda f: f(1.0, None), ValueError, shape_words, "wrong shape"),
        ErrorCase("F shape (6, 4, 1)", lambda f: f(F[..., None], None), ValueError, shape_words, "wrong shape"),
        ErrorCase("F ragged list", lambda f: f([[1.0, 0.0], [1.0]], None), ValueError, ("F_init", "rectangular"),
                  "wrong shape"),
        ErrorCase("u shape (3,)", lambda f: f(F, u[:3]), ValueError, ("u", "shape"), "wrong shape"),
        ErrorCase("u not broadcastable", lambda f: f(np.stack([F] * 3), np.stack([u] * 2)), ValueError,
                  ("u", "broadcast"), "wrong shape"),
        ErrorCase("F complex128", lambda f: f(F.astype(np.complex128), None), ValueError, ("F_init", "dtype"),
                  "wrong dtype"),
        ErrorCase("F bool", lambda f: f(F.astype(bool), None), ValueError, ("F_init", "dtype"), "wrong dtype"),
        ErrorCase("F object", lambda f: f(F.astype(object), None), ValueError, ("F_init", "dtype"), "wrong dtype"),
        ErrorCase("F strings", lambda f: f(F.astype(str), None), ValueError, ("F_init", "dtype"), "wrong dtype"),
        ErrorCase("u complex128", lambda f: f(F, u.astype(np.complex128)), ValueError, ("u", "dtype"), "wrong dtype"),
        ErrorCase("u spacelike", lambda f: f(F, np.array([0.5, 1.0, 0.0, 0.0])), ValueError,
                  ("u", "timelike", "cell"), "bad u"),
        ErrorCase("u not normalised", lambda f: f(F, np.array([2.0, 0.0, 0.0, 0.0])), ValueError,
                  ("u", "|u.u + 1|"), "bad u"),
    ]


def layouts(F: np.ndarray, u: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The same batch (n, 6, 4), (n, 4) in other memory layouts (views with the same values)."""
    n = F.shape[0]
    wide_F = np.zeros((2 * n, 6, 4))
    wide_F[::2] = F
    wide_u = np.zeros((2 * n, 4))
    wide_u[::2] = u
    reversed_F = np.ascontiguousarray(F[::-1, ::-1, ::-1])[::-1, ::-1, ::-1]
    reversed_u = np.ascontiguousarray(u[::-1, ::-1])[::-1, ::-1]
    transposed_F = np.ascontiguousarray(F.transpose(2, 1, 0)).transpose(2, 1, 0)
    return {
        "non-contiguous (every other cell)": (wide_F[::2], wide_u[::2]),
        "negatively strided (every axis reversed)": (reversed_F, reversed_u),
        "Fortran order": (np.asfortranarray(F), np.asfortranarray(u)),
        "transposed view": (transposed_F, u),
        "float32": (F.astype(np.float32), u.astype(np.float32)),
        "read-only": (_read_only(F), _read_only(u)),
    }


def _read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


def flux_norm(F: np.ndarray) -> np.ndarray:
    """|F| per species without overflow (numpy's norm squares 1e300)."""
    spatial = np.abs(F[..., 1:])
    largest = spatial.max(axis=-1)
    safe = np.where(largest > 0, largest, 1.0)
    return np.where(largest > 0, safe * np.sqrt(((spatial / safe[..., None]) ** 2).sum(axis=-1)), 0.0)


def is_finite_realizable(F: np.ndarray, rtol: float = 1e-10) -> bool:
    """Every value finite, n >= 0 and |F| <= n for each species, up to rtol of the cell's largest density
    (rounding of the boost back to the lab frame)."""
    if not np.all(np.isfinite(F)):
        return False
    density = F[..., 0]
    slack = rtol * np.abs(density).max(axis=-1, keepdims=True)
    return bool(np.all(density >= 0) and np.all(flux_norm(F) <= density + slack))


def status_names(status: int) -> str:
    names = [name for name, bit in {"NO_CROSSING": 1, **REJECTED, "BOX3D_LIMITED": 64, "NETWORK_NONFINITE": 128,
                                    "CORRECTION_LIMITED": 256}.items() if int(status) & bit]
    return "+".join(names) or "OK"


def write_table(path: Path, rows: list[tuple[str, ...]], header: tuple[str, ...], preamble: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [preamble, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    path.write_text("\n".join(lines) + "\n")
