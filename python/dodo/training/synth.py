"""Synthetic Emu-format databases with a known correction to Box3D (for tests and demos).

Recipe (fluid rest frame; every number is scaled by a per-row N_tot log-uniform in
[scale_min, scale_max] cm^-3):

- nu_e density U(0.5, 1.5); nubar_e density = nu_e density * U(0.5, 1.5); heavy-lepton density
  U(0.1, 1.0). Like Emu's campaigns, nu_mu = nu_tau = nubar_mu = nubar_tau initially
  (``heavy_symmetric``; otherwise each heavy species is drawn on its own).
- every species' flux has an isotropic random direction and flux factor U(0, max_flux_factor)
  (0.6 by default, well below the 0.9 hygiene cut), so nu_e/nubar_e ELN crossings are common.
- final state = F_init + s * dF_box, dF_box = Box3D's change (``dodo.box3d``), with the smooth
  known factor  s = 0.8 - 0.2 tanh(4 (x_nue - x_nuebar))^2 + 0.1 (f_nue^2 - f_nuebar^2)^2,
  x = comoving density / N_tot and f = flux factor (functions of the invariants), s in (0.6, 0.82).
  s is even under nu <-> nubar (and does not see mu <-> tau), as the runtime's answers are: it
  answers a cell through its canonical flavour image (docs/runtime.md, step 2). The factor before
  2026-12-05, 0.7 - 0.15 tanh(4 (x_nue - x_nuebar)) + 0.1 (f_nue^2 - f_nuebar^2), changed under
  nu <-> nubar, and no model package could reproduce it (outside probe, round 41).
  Because dF_box conserves the flavour-summed four-fluxes and lepton numbers exactly, so does
  the final state; because the realizable set is convex and both F_init and F_box are
  realizable, so is F_init + s dF_box for s in [0, 1]. Box3D therefore overshoots by a known
  amount (1 - s) dF_box, which a model that learns must remove.
- ``growthRate(1|s)`` is Box3D's growth-rate proxy in s^-1 (0 where Box3D finds no crossing);
  ``F4_final_stddev(1|ccm)`` is 1e-3 |F_final|. File attributes say ``synthetic = True`` and
  give this recipe.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from dodo.conventions import N_SPECIES, to_emu_layout

from .._atomic import atomic_hdf5, stale_temporaries

RECIPE = ("final = F_init + s dF_box, s = 0.8 - 0.2 tanh(4 (x_nue - x_nuebar))^2 + 0.1 (f_nue^2 - f_nuebar^2)^2; "
          "see dodo.training.synth")


def random_initial_states(rng: np.random.Generator, n: int, max_flux_factor: float = 0.6,
                          heavy_symmetric: bool = True, scale_min: float = 1e30, scale_max: float = 1e34) -> np.ndarray:
    """n physical initial states [n, 6, 4] in the rest frame (caller's units cm^-3)."""
    density = np.empty((n, N_SPECIES))
    density[:, 0] = rng.uniform(0.5, 1.5, n)
    density[:, 3] = density[:, 0] * rng.uniform(0.5, 1.5, n)
    heavy = [1, 2, 4, 5]
    if heavy_symmetric:
        density[:, heavy] = rng.uniform(0.1, 1.0, n)[:, None]
    else:
        density[:, heavy] = rng.uniform(0.1, 1.0, (n, 4))
    direction = rng.normal(size=(n, N_SPECIES, 3))
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    factor = rng.uniform(0.0, max_flux_factor, (n, N_SPECIES))
    if heavy_symmetric:
        direction[:, heavy] = direction[:, [1]]
        factor[:, heavy] = factor[:, [1]]
    F = np.empty((n, N_SPECIES, 4))
    F[..., 0] = density
    F[..., 1:] = (density * factor)[..., None] * direction
    scale = np.exp(rng.uniform(np.log(scale_min), np.log(scale_max), n))
    return F * (scale / density.sum(axis=1))[:, None, None]


def known_correction_factor(F_rest: np.ndarray) -> np.ndarray:
    """The factor s of the recipe (rest-frame F [n, 6, 4]); s in (0.6, 0.82), even under nu <-> nubar."""
    n = F_rest[..., 0]
    x = n / n.sum(axis=1, keepdims=True)
    f2 = np.sum(F_rest[..., 1:] ** 2, axis=-1) / np.where(n > 0, n, 1.0) ** 2
    return 0.8 - 0.2 * np.tanh(4.0 * (x[:, 0] - x[:, 3])) ** 2 + 0.1 * (f2[:, 0] - f2[:, 3]) ** 2


def synthetic_final_states(F_init: np.ndarray, lebedev_order: int = 17, z_method: str = "exact", threads=None):
    """(F_final, growth_rate s^-1, Box3D status) for rest-frame F_init per the recipe."""
    import dodo

    result = dodo.box3d(F_init, None, lebedev_order=lebedev_order, z_method=z_method, threads=threads)
    s = known_correction_factor(F_init)
    F_final = F_init + s[:, None, None] * (result.F_box - F_init)
    return F_final, np.asarray(result.growth_rate, dtype=np.float64), np.asarray(result.status)


def write_synthetic_database(path: str | Path, n: int, seed: int = 0, chunk_size: int = 65536,
                             heavy_symmetric: bool = True, max_flux_factor: float = 0.6,
                             lebedev_order: int = 17, z_method: str = "exact", threads=None,
                             progress: bool = False) -> dict:
    """Write an Emu-layout synthetic database (atomically); returns a summary dict."""
    import h5py

    import dodo

    if n < 1:
        raise ValueError("number of synthetic rows must be >= 1")
    if n >= 2**63:  # stored as a 64-bit count; larger failed later as "int too large to convert to float"
        raise ValueError(f"-n must be below 2^63 rows; got a number of {len(str(n))} digits")
    # Refused before anything is written (issue: 1.5 wrote states with |F| > n, NaN and negative
    # values failed inside NumPy), like `dodo apply --max-speed`.
    if not (np.isfinite(max_flux_factor) and 0.0 <= max_flux_factor < 1.0):
        raise ValueError(f"--max-flux-factor must be a finite flux factor |F|/n in [0, 1); got {max_flux_factor}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
        raise ValueError(f"--seed must be an integer in [0, 2^63) (it is stored as a 64-bit attribute); got {seed!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")
    dodo.box3d_settings(lebedev_order=lebedev_order, z_method=z_method)  # an unavailable order: before writing
    dodo.box3d(np.zeros((0, 6, 4)), lebedev_order=lebedev_order, z_method=z_method, threads=threads)  # bad threads
    _check_free_space(path, n, seed)
    rng = np.random.default_rng(seed)
    crossing = 0
    shape = (n, 4, 2, 3)
    # Chunked, so that HDF5 allocates (and, for the variable-length names, fills) storage as rows
    # are written: a contiguous layout made the first write fill the whole extent (-n 1e11: the
    # kernel's OOM killer after 24 GB; -n 1e9: 16 GB of fill written before the first row).
    rows = min(n, chunk_size)
    with atomic_hdf5(path) as (out, check):
        init = out.create_dataset("F4_initial(1|ccm)", shape, dtype="f8", chunks=(rows, 4, 2, 3))
        final = out.create_dataset("F4_final(1|ccm)", shape, dtype="f8", chunks=(rows, 4, 2, 3))
        stddev = out.create_dataset("F4_final_stddev(1|ccm)", shape, dtype="f8", chunks=(rows, 4, 2, 3))
        growth = out.create_dataset("growthRate(1|s)", (n,), dtype="f8", chunks=(rows,))
        dirs = out.create_dataset("directorynames", (n,), dtype=h5py.string_dtype(), chunks=(rows,))
        out["nf"] = 3
        steps = range(0, n, chunk_size)
        if progress:
            from tqdm import tqdm

            steps = tqdm(steps, desc="synth", unit="chunk")
        for start in steps:
            stop = min(start + chunk_size, n)
            F_init = random_initial_states(rng, stop - start, max_flux_factor, heavy_symmetric)
            F_final, rate, status = synthetic_final_states(F_init, lebedev_order, z_method, threads)
            crossing += int(np.sum(rate > 0))
            init[start:stop] = to_emu_layout(F_init)
            final[start:stop] = to_emu_layout(F_final)
            stddev[start:stop] = 1e-3 * np.abs(to_emu_layout(F_final))
            growth[start:stop] = rate
            dirs[start:stop] = [f"synthetic/{seed}/{i}" for i in range(start, stop)]
            check()  # a full disk stops the run here, with one clean error
        out.attrs["synthetic"] = True
        out.attrs["data_kind"] = "synthetic"
        out.attrs["recipe"] = RECIPE
        out.attrs["seed"] = seed
        out.attrs["heavy_symmetric"] = heavy_symmetric
        out.attrs["max_flux_factor"] = max_flux_factor
        out.attrs["box3d"] = _json(dodo.box3d_settings(lebedev_order=lebedev_order, z_method=z_method))
        out.attrs["dodo_version"] = str(getattr(dodo, "__version__", "unknown"))
    return {"path": str(path), "rows": n, "crossing_fraction": crossing / n, "seed": seed}


def _check_free_space(path: str | Path, n: int, seed: int) -> None:
    """Refuse, before anything is written, ``n`` rows whose data alone exceed the free space of
    the output's file system (a lower bound of the file's size: three [4, 2, 3] float64 tables,
    the growth rate and each row's directory name with its 16-byte reference)."""
    import shutil

    needed = n * (3 * 24 * 8 + 8 + 16 + len(f"synthetic/{seed}/{n}"))
    # Where the file is written: a symlink's target (atomic_path replaces it), whose file system may
    # not be the link's; and the temporaries of killed writers there, which the write removes first,
    # count as free. `dodo synth link.h5` (link.h5 -> /big/out.h5) in a full directory, and the rerun
    # of a `dodo synth OUT` SIGKILLed while writing (its temporary as large as OUT), were refused with
    # "lower -n" (outside probe, data-loss round eleven).
    limit = _file_size_limit()
    if limit is not None and needed > limit:
        # Checked before any row: the free space was, the process's own limit was not, and the rows were
        # drawn and Box3D run up to the write that passed it (outside probe, training round three).
        raise ValueError(f"{path}: {n:,} rows need at least {_bytes_text(needed)} but this process may write files of "
                         f"at most {limit:,} bytes (its file-size limit, ulimit -f): raise it (e.g. ulimit -f "
                         "unlimited), or lower -n")
    final = Path(os.path.realpath(path))
    directory = final.parent
    while not directory.exists() and directory != directory.parent:  # created on writing
        directory = directory.parent
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return  # nothing to say: the write reports its own error
    left = 0
    for stale in stale_temporaries(final):
        with contextlib.suppress(OSError):
            left += stale.stat().st_blocks * 512
    if needed > free + left:
        counted = f" (with {_bytes_text(left)} of killed writers' temporaries, which the write removes)" if left else ""
        # Replacing a file: the earlier one stays until the new one is whole (the write is atomic), so its
        # space is no room for the new one. "lower -n" alone, where the same -n had fitted an empty disk,
        # did not say why nor that removing the earlier file is the other way (outside probe, data-loss
        # round eleven, left).
        earlier = ""
        with contextlib.suppress(OSError):
            if final.is_file():
                occupied = final.stat().st_blocks * 512
                earlier = (f"; the earlier {path} ({_bytes_text(occupied)}) is kept until the new file is whole, so "
                           f"its space is not counted: remove it first to make room, or lower -n")
        raise ValueError(f"{path}: {n:,} rows need at least {_bytes_text(needed)} but {directory} has "
                         f"{_bytes_text(free + left)} free{counted}" + (earlier or "; lower -n"))


def _file_size_limit() -> int | None:
    """The soft RLIMIT_FSIZE of this process in bytes (``ulimit -f``), None when unlimited or unknown."""
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    except (ImportError, OSError, ValueError):
        return None
    return None if limit == resource.RLIM_INFINITY else int(limit)


def _bytes_text(count: int) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} bytes"


def _json(value) -> str:
    import json

    return json.dumps(value, sort_keys=True)
