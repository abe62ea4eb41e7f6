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


def _messages_by_name(
    fdp: descriptor_pb2.FileDescriptorProto,
) -> dict[str, descriptor_pb2.DescriptorProto]:
    """Map every message (nested ones included) to its full name, e.g. ``inference.A.B``."""
    out: dict[str, descriptor_pb2.DescriptorProto] = {}

    def walk(prefix: str, messages: list[descriptor_pb2.DescriptorProto]) -> None:
        for msg in messages:
            full = f"{prefix}.{msg.name}"
            out[full] = msg
            walk(full, list(msg.nested_type))

    walk(fdp.package, list(fdp.message_type))
    return out


def _field_signature(
    msg: descriptor_pb2.DescriptorProto, field: descriptor_pb2.FieldDescriptorProto
) -> tuple[object, ...]:
    oneof = msg.oneof_decl[field.oneof_index].name if field.HasField("oneof_index") else None
    return (field.number, field.type, field.label, field.type_name, oneof)


def _assert_messages_are_a_subset(
    ours: descriptor_pb2.FileDescriptorProto, theirs: descriptor_pb2.FileDescriptorProto
) -> None:
    """Every message, field and enum value of ``ours`` is in ``theirs`` with the same number, type, label and oneof."""
    assert ours.package == theirs.package == "inference"
    our_messages = _messages_by_name(ours)
    their_messages = _messages_by_name(theirs)
    for full_name, msg in our_messages.items():
        assert full_name in their_messages, f"message {full_name} not in tritonclient's proto"
        their_msg = their_messages[full_name]
        assert msg.options.map_entry == their_msg.options.map_entry, full_name
        their_fields = {f.name: f for f in their_msg.field}
        for field in msg.field:
            assert field.name in their_fields, f"{full_name}.{field.name} not in tritonclient's proto"
            assert _field_signature(msg, field) == _field_signature(their_msg, their_fields[field.name]), (
                f"{full_name}.{field.name}: (number, type, label, type_name, oneof) differs"
            )
        their_enums = {enum.name: enum for enum in their_msg.enum_type}
        for enum in msg.enum_type:
            assert enum.name in their_enums, f"enum {full_name}.{enum.name} not in tritonclient's proto"
            assert {v.name: v.number for v in enum.value}.items() <= {
                v.name: v.number for v in their_enums[enum.name].value
            }.items(), f"{full_name}.{enum.name}: values differ"
    their_enums = {enum.name: enum for enum in theirs.enum_type}
    for enum in ours.enum_type:
        assert [(v.name, v.number) for v in enum.value] == [(v.name, v.number) for v in their_enums[enum.name].value]


def test_wire_compatible_with_tritonclient() -> None:
    ours = _our_file_descriptor()
    theirs = _triton_file_descriptor()
    our_messages = _messages_by_name(ours)
    assert "inference.ModelInferRequest.InferInputTensor" in our_messages  # sanity: nesting walked
    assert "inference.ModelStatistics" in our_messages and "inference.SystemSharedMemoryStatusResponse" in our_messages
    _assert_messages_are_a_subset(ours, theirs)

    their_methods = {f"/{theirs.package}.{svc.name}/{m.name}": m for svc in theirs.service for m in svc.method}
    our_methods = {f"/{ours.package}.{svc.name}/{m.name}": m for svc in ours.service for m in svc.method}
    assert len(our_methods) == 17
    for path, method in our_methods.items():
        assert path in their_methods, f"RPC {path} not in tritonclient's service"
        theirs_m = their_methods[path]
        assert (method.input_type, method.output_type) == (theirs_m.input_type, theirs_m.output_type), path
        assert (method.client_streaming, method.server_streaming) == (
            theirs_m.client_streaming,
            theirs_m.server_streaming,
        ), path


def test_model_config_is_wire_compatible_with_tritonclients() -> None:
    """protos/triton/model_config.proto declares a subset of Triton's model_config.proto, numbered as it is."""
    ours = _our_file_descriptor("protos/triton/model_config.proto")
    our_messages = _messages_by_name(ours)
    assert {"inference.ModelConfig", "inference.ModelInput", "inference.ModelDynamicBatching"} <= set(our_messages)
    assert "inference.ModelOptimizationPolicy.ExecutionAccelerators.Accelerator" in our_messages
    _assert_messages_are_a_subset(ours, _triton_file_descriptor(triton_model_config_pb))
    # The response of the ModelConfig RPC holds the very message Triton's does.
    response = _messages_by_name(_our_file_descriptor())["inference.ModelConfigResponse"]
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
