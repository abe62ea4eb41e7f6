"""The codec of KServe v2 inference over REST: JSON bodies and Triton's binary tensor data extension.

Request bodies (KServe v2 "Inference Request JSON Object") are parsed from bytes by pydantic-core into
plain lists (``data`` is not validated element by element) and turned into numpy by
:mod:`gateway.datatypes`; responses are written with orjson.

With an ``Inference-Header-Content-Length: N`` header (Triton's binary tensor data extension), the
first N bytes of a body are the JSON request and the rest holds the raw data of each input whose
``parameters`` give a ``binary_data_size``, in input order (little-endian, row-major; BYTES elements
length-prefixed as in gRPC's raw contents). Outputs asked for with ``binary_data: true`` (or every
output, with the request parameter ``binary_data_output``) come back the same way: JSON first, its
length in ``Inference-Header-Content-Length``, then the raw output data, each output's
``parameters.binary_data_size`` giving its length.

An input whose parameters name a system shared memory region (Triton's ``shared_memory_region``,
``shared_memory_byte_size``, ``shared_memory_offset``) has no data in the body: it is read from the
region (:class:`gateway.core.shared_memory.SharedMemoryRegistry`). An output the data plane wrote to a
region is answered with those parameters and no data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import orjson
from pydantic import BaseModel, Field, StrictInt, ValidationError

from gateway.core.shared_memory import SharedMemoryRegistry, uses_shared_memory
from gateway.core.types import InferRequest, InferResponse, InferTensor, RequestedOutput
from gateway.datatypes import (
    BYTES,
    DEFAULT_LIMITS,
    INFERENCE_HEADER_LENGTH,
    RequestLimits,
    array_from_raw,
    array_from_values,
    array_to_raw,
)
from gateway.errors import InvalidArgumentError

BodyModel = TypeVar("BodyModel", bound=BaseModel)


class InputTensorJson(BaseModel):
    """An input tensor of a v2 REST inference request; ``data`` is flat or nested, row-major.

    ``data`` is left out when ``parameters.binary_data_size`` says where the raw data is.
    """

    name: str
    shape: list[StrictInt]
    datatype: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: Any = None


class RequestedOutputJson(BaseModel):
    """An output the client asks for."""

    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferRequestJson(BaseModel):
    """KServe v2 "Inference Request JSON Object"."""

    id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[InputTensorJson]
    outputs: list[RequestedOutputJson] = Field(default_factory=list)


def parse_json_body(model: type[BodyModel], raw: bytes, *, empty_ok: bool = False) -> BodyModel:
    """Parse a JSON body into the pydantic ``model``; an empty body is ``model()`` when ``empty_ok``.

    Raises:
        InvalidArgumentError: malformed JSON, or JSON that does not fit the model (the message says where).
    """
    if empty_ok and not raw.strip():
        return model()
    try:
        return model.model_validate_json(raw)
    except ValidationError as error:
        problem = error.errors()[0]
        where = ".".join(str(part) for part in problem["loc"])
        if problem["type"] == "json_invalid":
            raise InvalidArgumentError(f"malformed JSON: {problem['msg']}") from None
        raise InvalidArgumentError(f"invalid request body at '{where or '(top level)'}': {problem['msg']}") from None


@dataclass(frozen=True, slots=True)
class EncodedResponse:
    """An encoded inference response body.

    Attributes:
        body: the JSON response, followed by the raw data of the binary outputs, if any.
        json_length: bytes of JSON at the start of ``body`` when binary data follows, else None.
    """

    body: bytes
    json_length: int | None = None


def decode_infer_request(
    raw: bytes,
    model_name: str,
    model_version: str | None,
    json_length: int | None = None,
    limits: RequestLimits = DEFAULT_LIMITS,
    shared_memory: SharedMemoryRegistry | None = None,
) -> InferRequest:
    """Decode a v2 REST inference request body into the data plane's request.

    Args:
        raw: the whole body (decompressed).
        model_name, model_version: the model the path names.
        json_length: the ``Inference-Header-Content-Length`` header (binary tensor data extension),
            or None when the body is all JSON.
        limits: the JSON depth, tensor count and element count limits, checked before the JSON is
            parsed and before any tensor is allocated.
        shared_memory: the registry inputs placed in shared memory are read from (None: such
            inputs are refused).

    Raises:
        InvalidArgumentError: malformed JSON, JSON nested deeper than the limit, a missing field, a
            bad shape, data that does not fit the declared datatype and shape, binary data that
            does not add up to the ``binary_data_size`` of the inputs, or an input in shared memory
            that cannot be read (see :meth:`SharedMemoryRegistry.read_input`).
        PayloadTooLargeError: more inputs or requested outputs than the limit, or a shape that
            declares more elements than the limit.
    """
    if json_length is None:
        header, binary = raw, memoryview(b"")
    elif 0 <= json_length <= len(raw):
        header, binary = raw[:json_length], memoryview(raw)[json_length:]
    else:
        raise InvalidArgumentError(f"{INFERENCE_HEADER_LENGTH} is {json_length} but the body holds {len(raw)} bytes")
    limits.check_json_depth(header)
    body = parse_json_body(InferRequestJson, header)
    limits.check_tensor_counts(len(body.inputs), len(body.outputs))
    max_elements = limits.max_tensor_elements
    inputs: list[InferTensor] = []
    offset = 0
    for tensor in body.inputs:
        size = tensor.parameters.get("binary_data_size")
        if uses_shared_memory(tensor.parameters):
            if size is not None or tensor.data is not None or shared_memory is None:
                raise InvalidArgumentError(
                    f"input '{tensor.name}' is in shared memory: it takes neither data nor binary_data_size"
                    if shared_memory is not None
                    else f"input '{tensor.name}': shared memory is not available on this route"
                )
            data = shared_memory.read_input(tensor.name, tensor.datatype, tensor.shape, tensor.parameters, max_elements)
        elif size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidArgumentError(f"input '{tensor.name}': binary_data_size must be a non-negative integer")
            if offset + size > len(binary):
                raise InvalidArgumentError(
                    f"input '{tensor.name}': binary_data_size {size} runs past the end of the body "
                    f"({len(binary) - offset} bytes of binary data left)"
                )
            data = array_from_raw(
                binary[offset : offset + size], tensor.datatype, tensor.shape, tensor.name, max_elements
            )
            offset += size
        elif tensor.data is None:
            raise InvalidArgumentError(f"input '{tensor.name}' has neither data nor parameters.binary_data_size")
        else:
            data = array_from_values(tensor.data, tensor.datatype, tensor.shape, tensor.name, max_elements)
        inputs.append(InferTensor(tensor.name, tensor.datatype, tensor.shape, data, tensor.parameters))
    if offset != len(binary):
        raise InvalidArgumentError(
            f"the body holds {len(binary) - offset} bytes of binary data that no input's binary_data_size claims"
        )
    return InferRequest(
        model_name=model_name,
        model_version=model_version,
        id=body.id,
        parameters=body.parameters,
        inputs=inputs,
        outputs=[RequestedOutput(output.name, output.parameters) for output in body.outputs],
    )


def binary_outputs(request: InferRequest) -> Callable[[str], bool]:
    """Whether an output (by name) goes back as binary data (Triton's binary tensor data extension).

    An output's own ``binary_data`` parameter decides for it; otherwise the request's
    ``binary_data_output`` parameter does; by default outputs are JSON.
    """
    default = request.parameters.get("binary_data_output") is True
    asked = {
        output.name: output.parameters["binary_data"] is True
        for output in request.outputs
        if "binary_data" in output.parameters
    }
    return lambda name: asked.get(name, default)


def encode_infer_response(response: InferResponse, is_binary: Callable[[str], bool] | None = None) -> EncodedResponse:
    """Encode a data plane response: JSON ``data`` (flat), or raw data after the JSON for binary outputs.

    Args:
        response: the data plane's answer.
        is_binary: which outputs to send as binary data (see :func:`binary_outputs`); None: none.
    """
    outputs: list[dict[str, Any]] = []
    raw_parts: list[bytes] = []
    for tensor in response.outputs:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if uses_shared_memory(tensor.parameters):
            entry["parameters"] = tensor.parameters
        elif is_binary is not None and is_binary(tensor.name):
            raw = array_to_raw(tensor.data)
            raw_parts.append(raw)
            entry["parameters"] = {"binary_data_size": len(raw)}
        else:
            entry["data"] = _json_values(tensor)
        outputs.append(entry)
    body: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": outputs,
    }
    if response.id is not None:
        body["id"] = response.id
    if response.parameters:
        body["parameters"] = response.parameters
    encoded = orjson.dumps(body)
    if not raw_parts:
        return EncodedResponse(encoded)
    return EncodedResponse(b"".join([encoded, *raw_parts]), len(encoded))


def _json_values(tensor: InferTensor) -> list[Any]:
    if tensor.datatype == BYTES:
        # JSON carries text: undecodable bytes are replaced (binary outputs need binary_data).
        return [item.decode("utf-8", "replace") for item in tensor.data.ravel()]
    values: list[Any] = np.ravel(tensor.data).tolist()
    return values
