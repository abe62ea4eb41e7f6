"""The codec of KServe v2 inference over gRPC: protobuf messages to and from the core's types.

Messages of ``inference.GRPCInferenceService`` (KServe's grpc_predict_v2.proto, ``protos/``). Inputs
come as typed ``contents`` or as ``raw_input_contents``; values are checked and turned into numpy by
:mod:`gateway.datatypes`, as the REST codec does. An input whose parameters name a system shared
memory region is read from there (it has no contents, and no entry in ``raw_input_contents``, as
Triton has it); an output the data plane wrote to a region carries those parameters and no data (an
empty ``raw_output_contents`` entry when the answer is raw, so entries stay one per output).
"""

from __future__ import annotations

from typing import Any

from gateway.core.shared_memory import SharedMemoryRegistry, uses_shared_memory
from gateway.core.types import InferRequest, InferResponse, InferTensor, RequestedOutput
from gateway.datatypes import (
    BYTES,
    DEFAULT_LIMITS,
    RequestLimits,
    array_from_raw,
    array_from_values,
    array_to_raw,
    check_value_count,
    element_count,
    extend_repeated,
    numpy_dtype,
    repeated_values,
)
from gateway.errors import InvalidArgumentError
from protos import inference as pb
from protos.pool import ProtoMessage

#: Which InferTensorContents field carries each datatype (FP16 has none: it travels raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    BYTES: "bytes_contents",
}


def decode_parameters(parameters: Any) -> dict[str, Any]:
    """A protobuf ``map<string, InferParameter>`` as a plain dict of bool/int/float/str values."""
    decoded: dict[str, Any] = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        decoded[key] = getattr(parameter, choice) if choice else None
    return decoded


def encode_parameters(values: dict[str, Any], target: Any) -> None:
    """Write a dict of bool/int/float/str values into a ``map<string, InferParameter>``."""
    for key, value in values.items():
        parameter = target[key]
        if isinstance(value, bool):
            parameter.bool_param = value
        elif isinstance(value, int):
            parameter.int64_param = value
        elif isinstance(value, float):
            parameter.double_param = value
        else:
            parameter.string_param = str(value)


def decode_infer_request(
    request: ProtoMessage, limits: RequestLimits = DEFAULT_LIMITS, shared_memory: SharedMemoryRegistry | None = None
) -> InferRequest:
    """Decode a ModelInferRequest into the data plane's request.

    The message's size was limited by grpc (``max_request_bytes``); ``limits`` bounds the number of
    inputs and requested outputs and each shape's element count, before any tensor is built.
    Inputs in shared memory are read from ``shared_memory`` (None: they are refused).

    Raises:
        InvalidArgumentError: raw contents that do not pair up with the inputs outside shared
            memory, FP16 sent as typed contents, a bad shape, data that does not fit the declared
            datatype and shape, or an input in shared memory that cannot be read.
        PayloadTooLargeError: more inputs or requested outputs than the limit, or a shape that
            declares more elements than the limit (RESOURCE_EXHAUSTED).
    """
    limits.check_tensor_counts(len(request.inputs), len(request.outputs))
    max_elements = limits.max_tensor_elements
    raw_contents = request.raw_input_contents
    parameters = [decode_parameters(tensor.parameters) for tensor in request.inputs]
    in_memory = [uses_shared_memory(tensor_parameters) for tensor_parameters in parameters]
    sent = len(request.inputs) - sum(in_memory)
    if raw_contents and len(raw_contents) != sent:
        raise InvalidArgumentError(
            f"raw_input_contents holds {len(raw_contents)} entries for {sent} inputs outside shared memory"
        )
    inputs: list[InferTensor] = []
    raw_index = 0
    for index, tensor in enumerate(request.inputs):
        shape = list(tensor.shape)
        if in_memory[index]:
            if tensor.HasField("contents") or shared_memory is None:
                raise InvalidArgumentError(
                    f"input '{tensor.name}' is in shared memory: it takes no contents"
                    if shared_memory is not None
                    else f"input '{tensor.name}': shared memory is not available here"
                )
            data = shared_memory.read_input(tensor.name, tensor.datatype, shape, parameters[index], max_elements)
        elif raw_contents:
            data = array_from_raw(raw_contents[raw_index], tensor.datatype, shape, tensor.name, max_elements)
            raw_index += 1
        else:
            field = CONTENTS_FIELD.get(tensor.datatype)
            if field is None:
                numpy_dtype(tensor.datatype)  # raises for an unknown datatype
                raise InvalidArgumentError(
                    f"input '{tensor.name}': {tensor.datatype} has no typed contents field; "
                    "send it in raw_input_contents"
                )
            # Counted before the contents are copied out (into a list: a Python object per element).
            count = element_count(shape, tensor.name, max_elements)
            check_value_count(count, len(getattr(tensor.contents, field)), tensor.datatype, shape, tensor.name)
            values = repeated_values(tensor.contents, field)
            data = array_from_values(values, tensor.datatype, shape, tensor.name, max_elements)
        inputs.append(InferTensor(tensor.name, tensor.datatype, shape, data, parameters[index]))
    return InferRequest(
        model_name=request.model_name,
        model_version=request.model_version or None,
        id=request.id or None,
        parameters=decode_parameters(request.parameters),
        inputs=inputs,
        outputs=[RequestedOutput(o.name, decode_parameters(o.parameters)) for o in request.outputs],
    )


def encode_infer_response(response: InferResponse, raw: bool) -> ProtoMessage:
    """Encode a data plane response; ``raw`` writes ``raw_output_contents`` instead of typed contents.

    Typed contents cannot carry FP16, so a response with an FP16 output is written raw. An output in
    shared memory carries its parameters and no data.
    """
    message = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id or ""
    )
    encode_parameters(response.parameters, message.parameters)
    raw = raw or any(tensor.datatype not in CONTENTS_FIELD for tensor in response.outputs)
    for tensor in response.outputs:
        output = message.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        if uses_shared_memory(tensor.parameters):
            encode_parameters(tensor.parameters, output.parameters)
            if raw:
                message.raw_output_contents.append(b"")
        elif raw:
            message.raw_output_contents.append(array_to_raw(tensor.data))
        else:
            extend_repeated(output.contents, CONTENTS_FIELD[tensor.datatype], tensor.data)
    return message
