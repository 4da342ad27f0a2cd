"""The exported ensemble graph's out-of-distribution distance, evaluated in float64.

The gate's squared Mahalanobis distance d2 = ((x - m) P) . (x - m) has a precision matrix P of
condition number ~1e7 (the 34 features are strongly correlated). Summed in float32, as torch's
export of the float32 module writes it, the quadratic form cancels digits: 308.95 for 308.23 on a
far-out cell, and exp(-(d2 - d2_max) / d2_max) then moved the head output by up to 0.5%, so ONNX
Runtime and the runtime's native evaluator (which sums the distance in double) differed by up to
1.3e-4 N_tot (physics-law probe, round three; docs/reliability_python.md section 42).

`distance_in_float64` edits the graph so that the centring, the quadratic form and the gate's
exponential run in double: Cast nodes to double in front of the features, the mean, the matrix
and d2_max. The float32 initializers stay under their own names, which the package's
"dodo.native_network" description points at, and the gate's factor is cast back to float32 where
the graph already did so.
"""
from __future__ import annotations

import numpy as np

#: Initializers of the distance (prefix + name), as the ensemble's exporter names them.
DISTANCE_INITIALIZERS = ("feature_mean", "feature_precision", "d2_max")


class GateGraphError(ValueError):
    """The graph does not have the distance's expected form."""


def distance_in_float64(model, prefix: str = "ensemble.") -> bool:
    """Edits ``model`` (an onnx ModelProto) in place; True when it changed it, False when the graph
    has no such distance (no float32 initializers of those names) or was edited so already."""
    from onnx import TensorProto, helper, shape_inference

    graph = model.graph
    names = {key: prefix + key for key in DISTANCE_INITIALIZERS}
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    if not all(name in initializers for name in names.values()):
        return False
    if any(initializers[name].data_type != TensorProto.FLOAT for name in names.values()):
        return False
    doubled = {name: f"{name}.float64" for name in names.values()}
    if any(output in doubled.values() for node in graph.node for output in node.output):
        return False  # edited already
    # The centring Sub: the one on feature_mean whose output the MatMul on feature_precision takes
    # (the exporter may share one initializer between equal tensors, e.g. a member's input mean).
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    centring = [node for node in graph.node if node.op_type == "Sub" and list(node.input)[1:] == [names["feature_mean"]]
                and any(user.op_type == "MatMul" and names["feature_precision"] in user.input
                        for user in consumers.get(node.output[0], []))]
    if len(centring) != 1:
        raise GateGraphError(f"expected one Sub node centring the features on {names['feature_mean']} for the "
                             f"distance, found {len(centring)}")
    features = centring[0].input[0]
    features_double = f"{features}.float64"
    casts = [helper.make_node("Cast", [name], [double], to=TensorProto.DOUBLE, name=f"{double}.cast")
             for name, double in doubled.items()]
    feature_cast = helper.make_node("Cast", [features], [features_double], to=TensorProto.DOUBLE,
                                    name=f"{features_double}.cast")
    # Only the distance's nodes take the double constants: those downstream of the centring, up to
    # the graph's own casts back to float32.
    downstream, frontier = set(), [centring[0]]
    while frontier:
        node = frontier.pop()
        if id(node) in downstream or node.op_type == "Cast":
            continue
        downstream.add(id(node))
        for output in node.output:
            frontier.extend(consumers.get(output, []))
    for node in graph.node:
        if id(node) in downstream:
            for i, name in enumerate(node.input):
                if name in doubled:
                    node.input[i] = doubled[name]
    centring[0].input[0] = features_double
    # Topological order: the initializers' casts first, the features' cast just before the centring.
    nodes = list(graph.node)
    position = nodes.index(centring[0])
    nodes = casts + nodes[:position] + [feature_cast] + nodes[position:]
    del graph.node[:]
    graph.node.extend(nodes)
    try:  # every node between the casts and the graph's own cast back must now agree on double
        shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as error:
        raise GateGraphError(f"the distance in float64 does not type-check: {error}") from error
    return True


def far_out_probe_cells(n: int = 2000, seed: int = 20261205) -> np.ndarray:
    """Cells at rest ([n, 6, 4]) whose species span scales 1 ... 1e-300, a quarter of them crossing
    (nubar_e 1.5 times nu_e, opposite): where the float32 distance was off. For checks of the edit
    (tools/gate_distance_float64.py, tests/python/test_gate_graph.py)."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=(n, 6, 3))
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    density = rng.uniform(0.2, 1.0, (n, 6))
    flux = rng.uniform(0.0, 0.9, (n, 6))[..., None] * density[..., None] * direction
    F = np.concatenate([density[..., None], flux], axis=-1)
    F *= (10.0 ** rng.choice([0, -1, -3, -8, -20, -60, -150, -300], (n, 6)))[..., None]
    F[::4, 3] = F[::4, 0] * 1.5
    F[::4, 3, 1:] *= -1
    return F
