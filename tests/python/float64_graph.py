"""The shipped package's network evaluated in float64: the same ONNX graph with every float widened,
run by onnx's reference evaluator, as a torch module for dodo.training.export.closure_float64. It
stands in for the float64 training-time network (the checkpoint is not shipped) in the precision
test (test_native_network.py) and benchmarks/native_precision.py."""
from __future__ import annotations

import numpy as np


def _widen_to_float64(model) -> None:
    import onnx
    from onnx import numpy_helper

    def widen(tensor):
        return numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float64), tensor.name)

    for initializer in model.graph.initializer:
        if initializer.data_type == onnx.TensorProto.FLOAT:
            initializer.CopyFrom(widen(initializer))
    for node in model.graph.node:
        for attribute in node.attribute:
            if node.op_type == "Constant" and attribute.name == "value" and attribute.t.data_type == onnx.TensorProto.FLOAT:
                attribute.t.CopyFrom(widen(attribute.t))
            if node.op_type == "Cast" and attribute.name == "to" and attribute.i == onnx.TensorProto.FLOAT:
                attribute.i = onnx.TensorProto.DOUBLE
    for value in list(model.graph.input) + list(model.graph.output):
        if value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
            value.type.tensor_type.elem_type = onnx.TensorProto.DOUBLE


def float64_network(model_path, features: str):
    """A torch module: invariants (float32, as the runtime builds them) -> head_output in float64."""
    import onnx
    import torch
    from onnx.reference import ReferenceEvaluator

    model = onnx.load(str(model_path))
    _widen_to_float64(model)
    evaluator = ReferenceEvaluator(model)

    class Float64Graph(torch.nn.Module):
        head = "equivariant"

        def forward(self, x):
            out = evaluator.run(["head_output"], {"invariants": x.float().numpy().astype(np.float64)})[0]
            return torch.from_numpy(np.asarray(out, dtype=np.float64))

    network = Float64Graph()
    network.features = features
    return network
