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


def write_weighty_model(path: Path, scale: float, weight_bytes: int, layers: int = 0, width: int = 256) -> None:
    """An ONNX model ``y = x * scale`` (FP32 [batch, 1]) holding a weight of ``weight_bytes`` bytes it reads one
    value of (times zero), and ``layers`` MatMul+Tanh layers of a [width, width] matrix that only add time.

    Its answer does not depend on the weight, so every answer says which model gave it, while the
    runtime holds the weight's bytes (for the memory budget's tests and ``bench/memory_budget.py``).
    """
    nodes = [
        helper.make_node("Mul", ["x", "zero"], ["x_zero"]),
        helper.make_node("Cast", ["x_zero"], ["index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["weight", "index"], ["picked"]),
        helper.make_node("Mul", ["picked", "zero"], ["nothing"]),
        helper.make_node("Mul", ["x", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "nothing"], ["y" if not layers else "fast"]),
    ]
    initializers = [
        numpy_helper.from_array(
            np.random.default_rng(int(scale)).standard_normal(weight_bytes // 4, dtype=np.float32), "weight"
        ),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
        numpy_helper.from_array(np.array(scale, dtype=np.float32), "scale"),
    ]
    if layers:
        nodes += [
            helper.make_node("ReduceMean", ["x"], ["mean"], keepdims=0),
            helper.make_node("Expand", ["mean", "shape"], ["h0"]),
        ]
        for layer in range(layers):
            nodes.append(helper.make_node("MatMul", [f"h{layer}", "matrix"], [f"m{layer}"]))
            nodes.append(helper.make_node("Tanh", [f"m{layer}"], [f"h{layer + 1}"]))
        nodes += [
            helper.make_node("ReduceMean", [f"h{layers}"], ["slow"], keepdims=0),
            helper.make_node("Mul", ["slow", "zero"], ["slow_nothing"]),
            helper.make_node("Add", ["fast", "slow_nothing"], ["y"]),
        ]
        matrix = (np.random.default_rng(0).standard_normal((width, width)) / 32).astype(np.float32)
        initializers += [
            numpy_helper.from_array(matrix, "matrix"),
            numpy_helper.from_array(np.array([width, width]), "shape"),
        ]
    graph = helper.make_graph(
        nodes,
        "weighty",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
