"""`dodo export`: a trained checkpoint -> self-contained ONNX model package (docs/model_package.md)."""
from __future__ import annotations

import copy
import datetime
import inspect
import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch

from dodo.conventions import N_INVARIANTS

from .._atomic import atomic_path
from .frames import boost_from_rest, boost_to_rest, random_velocity
from .physics_torch import HEAD_OUTPUT_SIZES, ResidualClosureHead
from .train import closure_from_checkpoint, load_checkpoint, verified_checkpoint

FORMAT_VERSION = "1"
FEATURES = "invariants27-v1"
OPSET = 17
IR_VERSION = 8  # onnxruntime >= 1.16 reads IR <= 9; opset 17 needs IR >= 8
TEST_VECTOR_ATOL_OVER_NTOT = 1e-5
#: fp32 round-trip tolerance between torch and onnxruntime on the raw head output.
ROUNDTRIP_ATOL = 1e-5
ROUNDTRIP_RTOL = 1e-4


class ExportError(RuntimeError):
    """The export or its round-trip check failed."""


def closure_float64(network: torch.nn.Module, F_init, u, box3d_settings: dict, flavour_images: bool = False) -> dict:
    """The full closure in float64 (Box3D from dodo.box3d, then the learned correction).

    F_init [n, 6, 4] lab frame, u [n, 4]. Returns F_box, F_pred (lab frame), status, theta.
    flavour_images: the network's head output blended over each cell's mu <-> tau and nu <-> nubar
    images, from their own relabelled cells, as the runtime does (docs/runtime.md); False (the
    package's test vectors, and the runtime's self-test): the network on the cell alone.
    """
    import dodo

    F_init = np.asarray(F_init, dtype=np.float64)
    u = np.asarray(u, dtype=np.float64)
    from .features import box3d_keywords

    # All three Box3D settings, max_flux_factor too: without it Box3D ran at the default 0.98 for the
    # cell itself (and at the package's for its flavour images), so a package made from data at
    # another limit got test vectors and a round-trip check whose Box3D status and F_box were not the
    # runtime's (273 of 400 cells with flux factors to 0.9 at 0.6; parity and solver-laws probe, round one).
    box = dodo.box3d(F_init, u, **box3d_keywords(box3d_settings))
    F_box = np.asarray(box.F_box, dtype=np.float64)
    from .features import lab_features

    invariants = lab_features(getattr(network, "features", FEATURES), F_init, u, box, box3d=box3d_settings)
    ntot = np.asarray(dodo.comoving_density(F_init, u), dtype=np.float64)
    scale = ntot[:, None, None]
    F_init_rest = boost_to_rest(F_init, u[:, None, :]) / scale
    F_box_rest = boost_to_rest(F_box, u[:, None, :]) / scale
    # The float64 copy of the network gives the reference; an _OnnxHead is used as it is.
    network64 = network if isinstance(network, _OnnxHead) else copy.deepcopy(network).double().eval()
    head = ResidualClosureHead(network.head).double()
    with torch.no_grad():
        output = network64(torch.from_numpy(invariants))
        if flavour_images:
            from .synthetic_model import blend_over_flavour_images, flavour_image_weights, head_to_cell

            def image_head(species):
                image = lab_features(getattr(network, "features", FEATURES), F_init[:, list(species)], u,
                                     box3d=box3d_settings)
                return {"head": head_to_cell(network.head, network64(torch.from_numpy(image)).numpy(), species)}

            output = torch.from_numpy(blend_over_flavour_images(flavour_image_weights(F_init_rest), image_head)["head"])
        _, projected, _ = head(output, torch.from_numpy(F_init_rest), torch.from_numpy(F_box_rest), return_unlimited=True)
    # The runtime's order: projection, the crossing-strength bound, then the realizability limiter.
    from .physics_torch import limiter_theta
    from .synthetic_model import crossing_bound_factor

    bound_factor = crossing_bound_factor(projected.numpy(), np.asarray(box.growth_over_ntot, dtype=np.float64))
    bounded = projected * torch.from_numpy(bound_factor)[:, None, None]
    theta = limiter_theta(torch.from_numpy(F_box_rest), bounded)
    dF = theta[:, None, None] * bounded
    dF_lab = boost_from_rest(dF.numpy() * scale, u[:, None, :])
    # As in the runtime: a cell whose input Box3D rejects keeps the Box3D result (its input),
    # and a stable (NO_CROSSING) cell is returned unchanged, without the learned correction.
    status = np.asarray(box.status).astype(np.int64)
    rejected = (status & (_rejected_mask() | int(dodo.CellStatus.NO_CROSSING))) != 0
    dF_lab[rejected] = 0.0
    return {"F_box": F_box, "F_pred": F_box + dF_lab, "status": np.asarray(box.status), "theta": theta.numpy(),
            "bound_factor": bound_factor,
            "invariants": invariants, "ntot": ntot}


def _rejected_mask() -> int:
    from .preprocess import REJECTING_FLAGS

    import dodo

    return sum(int(getattr(dodo.CellStatus, name)) for name in REJECTING_FLAGS)


def make_test_vectors(network, box3d_settings: dict, n_cells: int = 6, seed: int = 2026) -> dict:
    """``n_cells`` crossing cells (two at rest, one for ``n_cells`` = 1; the rest boosted) and their
    closure outputs."""
    from .synth import random_initial_states

    rng = np.random.default_rng(seed)
    candidates = random_initial_states(rng, 16 * n_cells, max_flux_factor=0.5, scale_min=1e31, scale_max=1e33)
    u = random_velocity(rng, len(candidates), max_speed=0.6)
    u[: len(u) // 4] = [1.0, 0.0, 0.0, 0.0]
    F_lab = boost_from_rest(candidates, u[:, None, :])
    result = closure_float64(network, F_lab, u, box3d_settings)
    good = np.flatnonzero(np.asarray(result["status"]) == 0)  # crossing, nothing flagged
    # At most n_cells at rest: with two at rest, --test-vectors 1 sliced the moving cells [:-1] and
    # embedded 13 vectors (outside probe, round 38).
    at_rest = [i for i in good if u[i, 0] == 1.0][:min(2, n_cells)]
    moving = [i for i in good if u[i, 0] != 1.0][: n_cells - len(at_rest)]
    pick = np.array(at_rest + moving)
    if len(pick) < n_cells:
        raise ExportError("could not draw enough unflagged crossing cells for the test vectors")
    return {"F_init": F_lab[pick].tolist(), "u": u[pick].tolist(), "F_pred": result["F_pred"][pick].tolist(),
            "atol_over_ntot": TEST_VECTOR_ATOL_OVER_NTOT}


def _onnx_bytes(network: torch.nn.Module) -> bytes:
    network = copy.deepcopy(network).float().eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        options = {}
        if "dynamo" in inspect.signature(torch.onnx.export).parameters:
            options["dynamo"] = False  # the TorchScript exporter: no onnxscript needed, plain opset-17 graph
        torch.onnx.export(network, (torch.zeros(2, N_INVARIANTS),), buffer, input_names=["invariants"],
                          output_names=["head_output"], dynamic_axes={"invariants": {0: "N"}, "head_output": {0: "N"}},
                          opset_version=OPSET, **options)
    return buffer.getvalue()


def metadata_for(checkpoint: dict, head: str, test_vectors: dict) -> dict:
    import dodo

    from .._atomic import json_safe

    return {
        "dodo.format_version": FORMAT_VERSION,
        "dodo.head": head,
        "dodo.output_size": str(HEAD_OUTPUT_SIZES[head]),
        "dodo.features": FEATURES,
        "dodo.box3d": json.dumps(checkpoint["data"]["box3d"]),
        "dodo.training_data_sha256": checkpoint["data"]["sha256"],
        "dodo.training_data_kind": checkpoint["data"]["kind"],
        # Strict JSON, as every other metadata entry: a held-out mean over no finite value (growth
        # ratios of states without measured rates) was written as a bare NaN, which JSON does not
        # have, so strict readers of the package failed on it (outside probe, round 38).
        "dodo.metrics": json.dumps(json_safe(checkpoint.get("metrics", {})), allow_nan=False),
        "dodo.export_time": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "dodo.version": str(getattr(dodo, "__version__", "unknown")),
        "dodo.test_vectors": json.dumps(test_vectors),
        **training_states_metadata(checkpoint),
    }


#: Most training states a package records (11 bytes of metadata each, about 11 MB at this bound): the
#: runtime refuses a package above DODO_MAX_MODEL_FILE_BYTES (256 MiB), which some 20 million would reach.
MAX_RECORDED_TRAINING_STATES = 1_000_000


def training_states_metadata(checkpoint: dict) -> dict:
    """{"dodo.training_states": ...} of a checkpoint recording the states it trained or validated on
    (data.states, since 2026-12-07), else {} (also above MAX_RECORDED_TRAINING_STATES): `dodo score` of a
    package on its own training states said nothing (outside probe, training rounds three and five)."""
    from .._state_hashes import training_states_entry

    states = checkpoint.get("data", {}).get("states")
    if states is None or len(states) > MAX_RECORDED_TRAINING_STATES:
        return {}
    return {"dodo.training_states": training_states_entry(
        states.cpu().numpy() if isinstance(states, torch.Tensor) else np.asarray(states))}


def training_states_left_out_note(checkpoint: dict) -> str | None:
    """A line saying that the package records no dodo.training_states because the checkpoint trained on more
    states than MAX_RECORDED_TRAINING_STATES; None otherwise. The entry was left out without a word, so the
    user took the package's silence in `dodo score` on its training states for held-out scores (outside probe,
    data-loss round seventeen)."""
    states = checkpoint.get("data", {}).get("states")
    if states is None or len(states) <= MAX_RECORDED_TRAINING_STATES:
        return None
    return (f"note: dodo.training_states not recorded: the checkpoint trained or validated on {len(states):,} states, "
            f"more than the {MAX_RECORDED_TRAINING_STATES:,} a package records (docs/model_package.md), so dodo score "
            "of this package cannot warn of scoring its own training states")


def cpu_session(onnx_bytes: bytes):
    """An onnxruntime session (CPU, one thread) for the export's checks. ONNX Runtime's Linux builds
    start a telemetry uploader thread with their environment unless ORT_DISABLE_TELEMETRY is set,
    and a child forked after it (multiprocessing, a DataLoader worker) hung in its exit handlers
    waiting for that thread; so, as libdodo does before it loads ONNX Runtime (ort_library.cpp),
    telemetry is asked off unless the user set the variable (docs/runtime.md, Fork)."""
    import os

    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def roundtrip_check(network, onnx_bytes: bytes, test_vectors: dict, box3d_settings: dict, n_random: int = 512) -> dict:
    """Same batch through torch (fp32) and onnxruntime; then the test vectors' full closure with
    the ONNX head output. Raises ExportError beyond fp32 tolerance."""
    from .synth import random_initial_states

    session = cpu_session(onnx_bytes)
    rng = np.random.default_rng(7)
    F = random_initial_states(rng, n_random)
    from .features import lab_features

    invariants = np.asarray(lab_features(getattr(network, "features", FEATURES), F, box3d=box3d_settings),
                            dtype=np.float32)
    with torch.no_grad():
        expected = copy.deepcopy(network).float().eval()(torch.from_numpy(invariants)).numpy()
    got = session.run(["head_output"], {"invariants": invariants})[0]
    difference = np.abs(got - expected)
    allowed = ROUNDTRIP_ATOL + ROUNDTRIP_RTOL * np.abs(expected)
    if not np.all(difference <= allowed):
        raise ExportError(f"onnxruntime and torch differ by up to {difference.max():.3e} on the head output "
                          f"(fp32 tolerance {ROUNDTRIP_ATOL} + {ROUNDTRIP_RTOL} |x|)")

    # Full closure on the test vectors with the fp32 ONNX head: within the declared tolerance.
    F_init = np.array(test_vectors["F_init"])
    u = np.array(test_vectors["u"])
    reference = np.array(test_vectors["F_pred"])
    result = closure_float64(_OnnxHead(session, network.head, getattr(network, "features", FEATURES)), F_init, u,
                             box3d_settings)
    error = np.max(np.abs(result["F_pred"] - reference), axis=(1, 2)) / result["ntot"]
    if not np.all(error <= test_vectors["atol_over_ntot"]):
        raise ExportError(f"closure with the ONNX head misses the test vectors by {error.max():.3e} N_tot "
                          f"(> {test_vectors['atol_over_ntot']})")
    return {"max_head_difference": float(difference.max()), "max_test_vector_error_over_ntot": float(error.max())}


class _OnnxHead(torch.nn.Module):
    """An onnxruntime session posing as the network (float32 inside), for the round trip."""

    def __init__(self, session, head: str, features: str = FEATURES) -> None:
        super().__init__()
        self.session = session
        self.head = head
        self.features = features

    def forward(self, invariants: torch.Tensor) -> torch.Tensor:
        out = self.session.run(["head_output"], {"invariants": invariants.float().numpy()})[0]
        return torch.from_numpy(out).to(invariants.dtype)


def _refuse_weights_that_are_not_finite(network: torch.nn.Module, checkpoint_path) -> None:
    """A network holding a NaN or infinite weight or buffer gives NaN on every cell: `dodo export
    --no-check` wrote a package of it whose every load fails its self-test (its test vectors were
    NaN), exit 0; with the check, the refusal said only `differ by up to nan` (outside probe,
    round 23). Refused by name before anything is written."""
    for kind, entries in (("weight", network.named_parameters()), ("buffer", network.named_buffers())):
        for name, value in entries:
            if value.dtype.is_floating_point and not bool(torch.isfinite(value).all()):
                bad = int((~torch.isfinite(value)).sum())
                raise ExportError(f"{checkpoint_path}: the network's {kind} {name} is not finite ({bad} of "
                                  f"{value.numel()} entries NaN or infinite; did the run diverge?): a package of it "
                                  "would give NaN on every cell and fail its self-test at load; export another "
                                  "checkpoint (best.pt of the run, or an earlier one)")


def export_checkpoint(checkpoint_path: str | Path, output: str | Path, check: bool = True, n_test_vectors: int = 6,
                      log=print, checkpoint=None) -> dict:
    """Write the model package; returns {'path', 'metadata', 'roundtrip'}. ``checkpoint``: the file's
    content when the caller has read it already (read_checkpoint_file), verified here all the same."""
    import onnx

    checkpoint = (load_checkpoint(checkpoint_path) if checkpoint is None
                  else verified_checkpoint(checkpoint, checkpoint_path))
    closure = closure_from_checkpoint(checkpoint, checkpoint_path)
    network = closure.network
    _refuse_weights_that_are_not_finite(network, checkpoint_path)
    box3d_settings = checkpoint["data"]["box3d"]
    model_bytes = _onnx_bytes(network)
    test_vectors = make_test_vectors(network, box3d_settings, n_test_vectors)
    model = onnx.load_from_string(model_bytes)
    model.ir_version = min(model.ir_version, IR_VERSION)
    model.doc_string = "Dodo learned FFI correction: raw invariants -> head output (docs/model_package.md)"
    del model.metadata_props[:]
    metadata = metadata_for(checkpoint, network.head, test_vectors)
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    from .. import _core

    # The digests go in last, over the final bytes: dodo.content_sha256 over the graph and weights,
    # dodo.metadata_sha256 over every metadata entry (docs/model_package.md).
    final_bytes = _core.with_content_digest(model.SerializeToString())
    metadata = _core.model_metadata(final_bytes)
    roundtrip = roundtrip_check(network, final_bytes, test_vectors, box3d_settings) if check else None
    with atomic_path(output) as tmp:
        tmp.write_bytes(final_bytes)
    if roundtrip:
        log(f"round trip torch vs onnxruntime: max head difference {roundtrip['max_head_difference']:.2e}; "
            f"test vectors reproduced to {roundtrip['max_test_vector_error_over_ntot']:.2e} N_tot")
    log(f"wrote {output} ({network.head} head, {len(final_bytes)} bytes)")
    if training_states_left_out_note(checkpoint):
        log(training_states_left_out_note(checkpoint))
    return {"path": str(output), "metadata": metadata, "roundtrip": roundtrip}


def read_package_metadata(path: str | Path) -> dict:
    """metadata_props of a model package as a dict of strings. The package's tensors are not read:
    onnx.load follows external-data references, which a hostile package can point at any file
    (/dev/zero, another user's file; C round thirty-three), and the metadata needs none of them."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {entry.key: entry.value for entry in model.metadata_props}
