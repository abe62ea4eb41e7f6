"""Tests for the ``protos`` package: the committed descriptor set, and living beside tritonclient.

The gateway's messages live in a private descriptor pool (:mod:`protos.pool`), so tritonclient, which
registers the same ``inference.*`` names in protobuf's default pool, imports in the same process.
"""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import descriptor_pb2

from protos import inference
from protos.descriptor_set import SERIALIZED
from protos.generate import GENERATED_MODULE, REPO_ROOT, compile_descriptor_set, render_module
from protos.pool import POOL
from tests.proto_compat import assert_wire_compatible, messages_by_name

triton_grpc = pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc import model_config_pb2 as triton_model_config_pb  # noqa: E402
from tritonclient.grpc import service_pb2 as triton_pb  # noqa: E402


def test_descriptor_set_is_up_to_date() -> None:
    compiled = compile_descriptor_set()
    committed = (REPO_ROOT / GENERATED_MODULE).read_text(encoding="utf-8")
    assert render_module(compiled) == committed, f"{GENERATED_MODULE} is stale: run `python -m protos.generate`"
    assert descriptor_pb2.FileDescriptorSet.FromString(SERIALIZED) == compiled


def _our_file_descriptor(name: str = "protos/grpc_predict_v2.proto") -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    POOL.FindFileByName(name).CopyToProto(proto)
    return proto


def _triton_file_descriptor(module: object = triton_pb) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    module.DESCRIPTOR.CopyToProto(proto)  # type: ignore[attr-defined]
    return proto


def test_wire_compatible_with_tritonclient() -> None:
    ours = _our_file_descriptor()
    theirs = _triton_file_descriptor()
    assert ours.package == theirs.package == "inference"
    our_messages = messages_by_name(ours)
    assert "inference.ModelInferRequest.InferInputTensor" in our_messages  # sanity: nesting walked
    assert "inference.ModelStatistics" in our_messages and "inference.SystemSharedMemoryStatusResponse" in our_messages
    checked = assert_wire_compatible([ours], [theirs], "tritonclient")
    assert checked.methods == 17


def test_model_config_is_wire_compatible_with_tritonclients() -> None:
    """protos/triton/model_config.proto declares a subset of Triton's model_config.proto, numbered as it is."""
    ours = _our_file_descriptor("protos/triton/model_config.proto")
    our_messages = messages_by_name(ours)
    assert {"inference.ModelConfig", "inference.ModelInput", "inference.ModelDynamicBatching"} <= set(our_messages)
    assert "inference.ModelOptimizationPolicy.ExecutionAccelerators.Accelerator" in our_messages
    checked = assert_wire_compatible([ours], [_triton_file_descriptor(triton_model_config_pb)], "tritonclient")
    assert checked.messages == len(our_messages) and checked.enum_values > 0
    # The response of the ModelConfig RPC holds the very message Triton's does.
    response = messages_by_name(_our_file_descriptor())["inference.ModelConfigResponse"]
    assert response.field[0].type_name == ".inference.ModelConfig"


def test_a_config_pbtxt_reads_the_same_in_tritonclients_messages_and_ours() -> None:
    """A config written in Triton's text format parses into both, and each reads the other's bytes."""
    from google.protobuf import text_format

    from protos.model_config import ModelConfig

    text = (
        'name: "m" platform: "onnxruntime_onnx" max_batch_size: 8\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ 2, 2 ] } } ]\n'
        "dynamic_batching { preferred_batch_size: [ 4 ] default_queue_policy { max_queue_size: 3 } }\n"
        "instance_group [ { count: 2 kind: KIND_CPU } ]\n"
        'parameters { key: "intra_op_thread_count" value: { string_value: "1" } }\n'
    )
    ours = text_format.Parse(text, ModelConfig())
    theirs = text_format.Parse(text, triton_model_config_pb.ModelConfig())
    assert triton_model_config_pb.ModelConfig.FromString(ours.SerializeToString()) == theirs
    assert ModelConfig.FromString(theirs.SerializeToString()) == ours


def test_messages_travel_between_tritonclient_and_the_gateway_in_one_process() -> None:
    """Both message sets are importable side by side, and each parses what the other writes."""
    images = np.arange(12, dtype=np.float32).reshape(3, 4)
    tensor = triton_grpc.InferInput("input", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    theirs = triton_pb.ModelInferRequest(model_name="digits", model_version="2", id="r1")
    theirs.inputs.extend([tensor._get_tensor()])
    theirs.raw_input_contents.extend([tensor._get_content()])
    ours = inference.ModelInferRequest.FromString(theirs.SerializeToString())
    assert (ours.model_name, ours.model_version, ours.id) == ("digits", "2", "r1")
    assert list(ours.inputs[0].shape) == [3, 4] and ours.inputs[0].datatype == "FP32"
    assert np.array_equal(np.frombuffer(ours.raw_input_contents[0], dtype=np.float32).reshape(3, 4), images)

    answer = inference.ModelInferResponse(model_name="digits", model_version="2")
    output = answer.outputs.add(name="logits", datatype="FP32", shape=[3, 4])
    output.contents.fp32_contents.extend(images.ravel().tolist())
    parsed = triton_pb.ModelInferResponse.FromString(answer.SerializeToString())
    assert list(parsed.outputs[0].contents.fp32_contents) == images.ravel().tolist()
    assert type(parsed).DESCRIPTOR.file.pool is not type(answer).DESCRIPTOR.file.pool
