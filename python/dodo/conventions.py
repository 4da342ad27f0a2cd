"""Conventions Dodo uses everywhere in Python (physics.md section 1). The one owner.

Species axis (length 6): nu_e, nu_mu, nu_tau, nubar_e, nubar_mu, nubar_tau,
index ``a = 3*s + f`` with ``s`` in (nu, nubar) and ``f`` in (e, mu, tau).
Component axis (length 4): contravariant four-flux (t, x, y, z); t is the number density.
Metric signature (-, +, +, +). Inputs are lab-tetrad components plus the fluid four-velocity.
Emu/Rhea files use (x, y, z, t) and axes [sim, xyzt, nu/nubar, flavour]; convert at the
boundary with :func:`from_emu_layout` / :func:`to_emu_layout` and nowhere else.
"""
from __future__ import annotations

from typing import Union

import numpy as np
import numpy.typing as npt

from ._shown import _shown_number
from ._units import _plain_numbers

N_FLAVOURS = 3
N_SPECIES = 6
N_COMPONENTS = 4
N_INVARIANTS = 27

FLAVOURS = ("e", "mu", "tau")
SPECIES = ("nu_e", "nu_mu", "nu_tau", "nubar_e", "nubar_mu", "nubar_tau")
COMPONENTS = ("t", "x", "y", "z")
METRIC = np.array([-1.0, 1.0, 1.0, 1.0])
REST_FRAME_VELOCITY = np.array([1.0, 0.0, 0.0, 0.0])
# Read-only: `METRIC[0] = 1` (or `v = REST_FRAME_VELOCITY; v[1:] = w`) wrote into the one shared
# constant, silently changing every later user's metric (outside probe, round 42).
METRIC.setflags(write=False)
REST_FRAME_VELOCITY.setflags(write=False)

#: sqrt(2) G_F / hbar in cm^3 s^-1: growth rate in s^-1 = growth_over_ntot * N_tot[cm^-3] * this.
#: G_F/(hbar c)^3 = 1.1663788e-5 GeV^-2 (PDG); hbar = 6.582119569e-25 GeV s; (hbar c) = 1.97326980e-14 GeV cm.
GROWTH_RATE_PER_NTOT = 1.9255e-22

#: Velocity normalisation tolerance: |u.u + 1| above this times max(1, u^t^2) is rejected.
VELOCITY_NORM_TOLERANCE = 1e-6
#: ... but at most this (C++ kVelocityNormToleranceCap): every accepted u is timelike (u.u <= -0.5).
VELOCITY_NORM_TOLERANCE_CAP = 0.5

#: Most worker threads a Box3D batch or a closure may ask for (every language; C++ kMaxThreads).
MAX_THREADS = 1024

#: Flavour pairs of pairwise Box3D, in the order the core uses.
FLAVOUR_PAIRS = ((0, 1), (0, 2), (1, 2))
#: ELN-crossing inputs per flavour pair (dodo.crossing_features): I+, I-, the solid-angle fraction
#: where G > 0, the two lobes' mean-direction lengths, the cosine between them (C++ kCrossingFeatures).
CROSSING_FEATURES_PER_PAIR = 6
N_CROSSING_FEATURES = len(FLAVOUR_PAIRS) * CROSSING_FEATURES_PER_PAIR


#: Species relabellings under which the fast-flavour equations are symmetric (docs/qke.md): new
#: species a is old species PERMUTATION[a]. Neutrinos <-> antineutrinos (H -> -H*), and mu <-> tau
#: (two flavours whose vacuum terms the FFI equations drop). The runtime's flavour images use both.
NU_NUBAR_EXCHANGE = (3, 4, 5, 0, 1, 2)
MU_TAU_EXCHANGE = (0, 2, 1, 3, 5, 4)


def species_index(antineutrino: Union[int, np.integer], flavour: Union[int, np.integer]) -> int:
    """Species index ``3*s + f`` (s = 0 neutrino, 1 antineutrino; f = 0 e, 1 mu, 2 tau).

    Anything else is a ValueError: (2, 0) gave 6, (0, 3) gave 3 (nubar_e), (1.5, 0) gave 4.5."""
    for name, value, top in (("antineutrino", antineutrino, 1), ("flavour", flavour, N_FLAVOURS - 1)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or not 0 <= value <= top:
            raise ValueError(f"species_index: {name} must be an integer in [0, {top}]; got "
                             f"{_shown_number(value, repr, short=False)}")
    return 3 * int(antineutrino) + int(flavour)


def _as_array(value, densities: str = "") -> np.ndarray:
    """np.asarray, and np.from_dlpack for an array that is a DLPack producer and nothing more (no
    __array__: array-api-strict's), which np.asarray made a 0-d object array, refused as "got ()"
    (outside probe, Python round forty-nine; dodo.box3d reads them so too). ``densities``: the name of
    four-fluxes, which carry a unit only as dodo.box3d takes them (cm^-3 or dimensionless): np.asarray
    dropped an astropy or pint Quantity's unit, so F in m^-3 went through from_emu_layout to the closure
    as plain numbers, read as cm^-3 (outside probe, Python round fifty)."""
    if densities:
        value = _plain_numbers(densities, value, density=True)
    array = np.asarray(value)
    # Not of an ndarray, which has __dlpack__ too: np.array(None) ended in DLPack's BufferError "DLPack only
    # supports signed/unsigned integers, float and complex dtypes" (outside probe, Python round sixty-four).
    if array.dtype == object and array.ndim == 0 and hasattr(value, "__dlpack__") and not isinstance(value, np.ndarray):
        array = np.from_dlpack(value)
    return array


def _extension_real_dtype(dtype: np.dtype) -> bool:
    """Whether ``dtype`` holds real numbers that float64 holds exactly though NumPy counts it neither a
    float nor an integer (kind "V"): ml_dtypes' bfloat16, float8_e4m3fn, int4, ..., what np.asarray of a
    JAX array (and ONNX's tools) give. A bfloat16 F_init was refused as "must hold real numbers (any
    float or integer dtype); got dtype bfloat16", while float8_e5m2 (kind "f") was taken (outside probe,
    Python round fifty-eight). Structured and raw void dtypes do not cast to float64 and stay refused."""
    return (dtype.kind == "V" and dtype.fields is None and dtype.subdtype is None
            and np.can_cast(dtype, np.float64, "safe"))


def _computable(array: np.ndarray) -> np.ndarray:
    """``array`` as float64 where its dtype is such an extension real: numpy's einsum refuses bfloat16
    ("invalid data type for einsum", naming no argument: minkowski_dot, outside probe, Python round
    fifty-eight), and its sums would round at bfloat16's 3 digits."""
    return array.astype(np.float64) if _extension_real_dtype(array.dtype) else array


def _real_numbers(array: np.ndarray, function: str, name: str, value=None) -> np.ndarray:
    """``array`` when it holds real numbers (a float, integer or bool dtype, or an extension real such as
    bfloat16), else a one-line ValueError. total_density and minkowski_dot took any dtype: an object
    array came back as objects, complex as complex (the imaginary parts summed with the densities),
    and strings, bytes and datetimes ended in NumPy's "the resolved dtypes are
    not compatible with add.reduce" or "ufunc 'negative' did not contain a loop", naming nothing of
    Dodo's (outside probe, Python rounds sixty-three and sixty-four), while dodo.box3d and the other
    entry points refuse them by name."""
    dtype = array.dtype
    if dtype.kind in "fiub" or _extension_real_dtype(dtype):  # bool: 0 and 1, as total_density always summed it
        return array
    if dtype == object and array.ndim == 0 and not isinstance(value, np.ndarray):
        kind = type(value).__name__
        got = f"{'an' if kind[:1].lower() in 'aeiou' else 'a'} {kind}"
        raise ValueError(f"{function}: {name} must be an array of real numbers (any float or integer dtype); got {got}")
    hint = {"O": f": if it holds numbers, convert it first, np.asarray({name}, dtype=float)",
            "c": f": if its imaginary parts are 0, pass {name}.real"}.get(dtype.kind, "")
    raise ValueError(f"{function}: {name} must hold real numbers (any float or integer dtype); got dtype {dtype}{hint}")


def invariant_pairs() -> list[tuple[int, int]]:
    """Species pairs (a, b), a <= b, in the order of invariants 6..26."""
    return [(a, b) for a in range(N_SPECIES) for b in range(a, N_SPECIES)]


def minkowski_dot(a: npt.ArrayLike, b: npt.ArrayLike) -> np.ndarray:
    """A.B = -A^t B^t + A.B (spatial), over the last axis (length 4: t, x, y, z); a and b
    broadcast. Any last axis other than 4 is a ValueError (a (3,) or (5,) vector gave a number).
    Integer (and bool) vectors are computed as float64; what is not real numbers (object, complex,
    strings, datetimes) is a ValueError."""
    given = {"a": a, "b": b}
    a, b = _computable(_as_array(a)), _computable(_as_array(b))  # lists: "list indices must be integers ..."
    for name, value in (("a", a), ("b", b)):
        _real_numbers(value, "minkowski_dot", name, given[name])
        if value.ndim < 1 or value.shape[-1] != N_COMPONENTS:
            raise ValueError(f"minkowski_dot: {name} must have shape (..., 4) (t, x, y, z); got {value.shape}")
    # Integers as float64, as total_density sums them: in their own dtype (1, 0, 0, 0).(1, 0, 0, 0) of
    # uint8 was 255 (the negation wrapped), and (2^62, 0, 0, 0).(4, 0, 0, 0) of int64 was 0 (outside
    # probe, Python round sixty-four).
    a, b = (value.astype(np.float64) if value.dtype.kind in "biu" else value for value in (a, b))
    return -a[..., 0] * b[..., 0] + np.einsum("...i,...i->...", a[..., 1:], b[..., 1:])


def total_density(F: npt.ArrayLike, absolute: bool = False) -> np.ndarray:
    """N_tot = the sum of the six densities of rest-frame cells ([..., 6, 4] -> [...]); with
    ``absolute``, the sum of their magnitudes. Densities near 1e308 sum beyond float64: such a cell's
    N_tot is inf (or NaN), without NumPy's overflow warning, so that callers flag it by
    ``np.isfinite`` (a state whose N_tot is not finite cannot be normalised, scored or simulated).
    Integer (and bool) densities and float16 ones are summed as float64 (float16 overflows at 65504: six
    densities of 20,000 gave inf), float32 and wider floats in their own dtype; what is not real numbers
    (object, complex, strings, datetimes) is a ValueError."""
    given, F = F, _as_array(F, "F")
    _real_numbers(F, "total_density", "F", given)
    if F.ndim < 2 or F.shape[-2:] != (N_SPECIES, N_COMPONENTS):  # a (4,) vector or (6, 3) gave a number
        raise ValueError(f"total_density: F must have shape (..., 6, 4) (species x t, x, y, z); got {F.shape}")
    n = _computable(F[..., 0])
    # Summed as float64: int64 wrapped (six 2^62 gave -2^63), float16 overflowed at 65504 (outside probe,
    # Python round sixty-four).
    if n.dtype.kind in "biu" or n.dtype == np.float16:
        n = n.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        return (np.abs(n) if absolute else n).sum(axis=-1)


def from_emu_layout(emu: npt.ArrayLike) -> np.ndarray:
    """[sim, (x,y,z,t), (nu,nubar), flavour] -> [sim, 6 species, (t,x,y,z)].

    A relabelling of axes alone: the values, and their dtype, are returned as given (no arithmetic, so
    no dtype is refused here; the functions that compute refuse what is not real numbers)."""
    emu = _as_array(emu, "emu")
    if emu.ndim != 4 or emu.shape[1] != 4 or emu.shape[2] != 2:
        raise ValueError(f"Emu four-flux array must have shape [nsims, 4 (x,y,z,t), 2, NF]; got {emu.shape}")
    nf = emu.shape[3]
    xyzt_to_txyz = [3, 0, 1, 2]
    out = emu[:, xyzt_to_txyz, :, :]  # [sim, txyz, s, f]
    out = np.transpose(out, (0, 2, 3, 1)).reshape(emu.shape[0], 2 * nf, 4)
    return np.ascontiguousarray(out)


def to_emu_layout(F: npt.ArrayLike) -> np.ndarray:
    """[sim, 6, (t,x,y,z)] -> [sim, (x,y,z,t), (nu,nubar), flavour]; the values and their dtype as given
    (a relabelling of axes alone, as :func:`from_emu_layout`)."""
    F = _as_array(F, "F")
    if F.ndim != 3 or F.shape[2] != 4 or F.shape[1] % 2:
        raise ValueError(f"four-flux array must have shape [nsims, 2*NF, 4]; got {F.shape}")
    nf = F.shape[1] // 2
    per = F.reshape(F.shape[0], 2, nf, 4)[..., [1, 2, 3, 0]]  # [sim, s, f, xyzt]
    return np.ascontiguousarray(np.transpose(per, (0, 3, 1, 2)))
