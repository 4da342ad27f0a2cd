"""Writing Emu-format asymptotic databases (data.md), atomically.

Layout: ``F4_initial(1|ccm)``, ``F4_final(1|ccm)``, ``F4_final_stddev(1|ccm)`` [nsims, 4 (x,y,z,t),
2 (nu, nubar), 3], ``growthRate(1|s)`` [nsims], ``nf``; plus Dodo's extras ``tsat(s)``,
``tend(s)``, ``box_length_cm``, ``rotation_R`` and ``linear_growthRate_box(1|s)``.
Fluxes are in the original (input) frame, as in Emu's validation file.
"""
from __future__ import annotations

import json

import numpy as np

from .._atomic import atomic_hdf5
from ..conventions import to_emu_layout


def species_to_emu(four_flux: np.ndarray) -> np.ndarray:
    """[n, 2, 3, 4 (t,x,y,z)] or [n, 6, 4] -> Emu [n, 4 (x,y,z,t), 2, 3]."""
    four_flux = np.asarray(four_flux, float)
    return to_emu_layout(four_flux.reshape(four_flux.shape[0], 6, 4))


def require_h5py() -> None:
    """Fail early, with the fix, when h5py (needed to write the output) is missing."""
    try:
        import h5py  # noqa: F401
    except ImportError:
        from .._shown import extra_install

        raise ModuleNotFoundError(f"writing the output needs h5py: pip install h5py (or {extra_install('qke')})") from None


def attribute_value(value):
    """``value`` as an HDF5 attribute takes it: text made storable (a path or command line that is
    not UTF-8 arrives surrogate-escaped, which h5py cannot encode: `dodo simulate OUT --input d\xe9.h5`
    failed writing its provenance, after the work, every rerun the same), other plain values as
    they are, anything else as JSON (which escapes such text itself)."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return value if isinstance(value, (int, float, np.number)) else json.dumps(value)


def write_emu_database(path: str, results: dict, attributes: dict) -> None:
    """Write valid runs in Emu's layout; ``results`` holds Dodo-layout arrays [n, 6, 4] etc."""
    # atomic_hdf5: a full disk gives one OSError and leaves no file, never an HDF5 crash (issue 11).
    with atomic_hdf5(path) as (f, _):
        f["F4_initial(1|ccm)"] = species_to_emu(results["initial"])
        f["F4_final(1|ccm)"] = species_to_emu(results["final"])
        f["F4_final_stddev(1|ccm)"] = species_to_emu(results["final_stddev"])
        f["growthRate(1|s)"] = np.asarray(results["growth_rate"], float)
        f["nf"] = np.int64(3)
        for name, key in (("tsat(s)", "saturation_time"), ("tend(s)", "end_time"), ("box_length_cm", "box_length_cm"),
                          ("rotation_R", "rotation"), ("linear_growthRate_box(1|s)", "linear_growth_rate"),
                          ("input_index", "input_index")):
            if key in results:
                f[name] = np.asarray(results[key])
        for key, value in attributes.items():
            f.attrs[key] = attribute_value(value)
