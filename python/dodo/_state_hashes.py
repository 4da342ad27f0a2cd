"""64-bit hashes of states, and a model package's record of the states it trained on
("dodo.training_states", docs/model_package.md): numpy only, for the runtime's `dodo score` as for training."""
from __future__ import annotations

import base64
import json

import numpy as np

#: How "dodo.training_states" names its hashes.
TRAINING_STATES_KEY = "fnv1a64(F_init at rest, float64)"


def row_hashes(values: np.ndarray) -> np.ndarray:
    """A 64-bit FNV-1a hash of each row's float64 words (rows equal bit for bit hash alike)."""
    words = np.ascontiguousarray(values, dtype=np.float64).view(np.uint64)
    hashes = np.full(len(words), 0xCBF29CE484222325, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for column in range(words.shape[1]):
            hashes ^= words[:, column]
            hashes *= np.uint64(0x100000001B3)
    return hashes


def rest_state_hashes(F_init: np.ndarray, u: np.ndarray | None = None) -> np.ndarray:
    """The sorted, distinct row_hashes of the initial four-fluxes F_init ([n, 6, 4], float64, as dodo score
    reads an Emu file) of the rows given at rest (u = (1, 0, 0, 0) exactly; None: all at rest): the states
    an Emu-layout file can hold."""
    F = np.asarray(F_init, dtype=np.float64).reshape(-1, 24)
    if u is not None:
        F = F[np.all(np.asarray(u, dtype=np.float64).reshape(len(F), 4) == (1.0, 0.0, 0.0, 0.0), axis=1)]
    return np.unique(row_hashes(F)) if len(F) else np.zeros(0, np.uint64)


def training_states_entry(hashes: np.ndarray) -> str:
    """The "dodo.training_states" value of a package trained on the states of ``hashes`` (uint64 or their int64 bits)."""
    words = np.asarray(hashes).astype("<i8")
    return json.dumps({"hash": TRAINING_STATES_KEY, "states": int(len(words)),
                       "hashes": base64.b64encode(words.tobytes()).decode()})


def package_training_states(metadata: dict) -> np.ndarray | None:
    """The uint64 hashes of a package's "dodo.training_states"; None without one (a package exported before
    2026-12-07, the shipped one) or with one this dodo does not read."""
    try:
        entry = json.loads(metadata["dodo.training_states"])
        if entry.get("hash") != TRAINING_STATES_KEY:
            return None
        return np.frombuffer(base64.b64decode(entry["hashes"], validate=True), dtype="<u8")
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError):
        # RecursionError: an entry nested deeper than json reads (re-signed "[[[...]]]") ended `dodo score` of a
        # package that loads with "maximum recursion depth exceeded" (outside probe, original findings round four)
        return None
