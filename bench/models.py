"""The benchmark's models: multilayer perceptrons with random weights, written as ONNX.

Random weights cost the same to run as trained ones; what is measured is serving, not accuracy.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: 64 inputs, one hidden layer of 128, 10 outputs (the size of the issue's small MLP).
SMALL_MLP = (64, 128, 10)
#: 1024 inputs, four hidden layers 1024 wide, 10 outputs.
LARGE_MLP = (1024, 1024, 1024, 1024, 1024, 10)


def write_mlp(path: Path, widths: Sequence[int], seed: int = 0) -> None:
    """An MLP ``input`` FP32 [batch, widths[0]] -> ``output`` FP32 [batch, widths[-1]], ReLU between layers."""
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    previous = "input"
    layers = len(widths) - 1
    for layer, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        weights = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        initializers += [
            numpy_helper.from_array(weights, f"w{layer}"),
            numpy_helper.from_array(np.zeros(fan_out, dtype=np.float32), f"b{layer}"),
        ]
        if layer == layers - 1:
            nodes.append(helper.make_node("Gemm", [previous, f"w{layer}", f"b{layer}"], ["output"]))
        else:
            nodes.append(helper.make_node("Gemm", [previous, f"w{layer}", f"b{layer}"], [f"z{layer}"]))
            nodes.append(helper.make_node("Relu", [f"z{layer}"], [f"h{layer}"]))
            previous = f"h{layer}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", widths[0]])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", widths[-1]])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
