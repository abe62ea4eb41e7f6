"""TF Serving and TorchServe compatible REST routes: thin adapters over the same data plane as v2.

Clients written for TensorFlow Serving's REST API or TorchServe's inference API call the gateway
unchanged, for any model it serves (whatever its backend). Every prediction goes through
:meth:`gateway.dataplane.DataPlane.infer` (protocol labels ``tfserving-rest`` and
``torchserve-rest``), so checks, scheduling, metrics and request ids are those of v2; these routes
only translate JSON. Values are read as the model's datatypes (from its metadata); nesting gives
the shapes.

TF Serving (https://www.tensorflow.org/tfx/serving/api_rest):

- ``POST /v1/models/{m}[/versions/{v}]:predict`` with ``{"signature_name"?, "instances": ...}`` (row
  format: one item per instance along dim 0; a plain value per instance when the model has one
  input, else an object ``{input: value}`` per instance) or ``{"signature_name"?, "inputs": ...}``
  (columnar: one value for a single input, else an object ``{input: value}``). The answer is
  ``{"predictions": ...}`` (one value per instance, or an object per instance when the model has
  several outputs) or ``{"outputs": ...}`` (one value, or an object by output name). BYTES values are
  strings or ``{"b64": "..."}``; BYTES outputs whose name ends in ``_bytes`` answer ``{"b64": "..."}``.
  ``NaN`` and ``Infinity`` are valid numbers, as in TF Serving. The only signature of a model is
  ``serving_default`` (or, for the tensorflow backend, the one its config names).
- ``GET /v1/models/{m}[/versions/{v}]``: ``{"model_version_status": [{"version", "state", "status":
  {"error_code", "error_message"}}]}`` (AVAILABLE, LOADING, or END with the load error).
- ``GET /v1/models/{m}[/versions/{v}]/metadata``: ``{"model_spec", "metadata": {"signature_def":
  {"signature_def": {<signature>: {"inputs", "outputs", "method_name"}}}}}`` with TF dtypes.
- Errors: ``{"error": "<message>"}`` with the status of :mod:`gateway.errors`.

TorchServe (https://pytorch.org/serve/inference_api.html):

- ``POST /predictions/{m}[/{v}]`` with a JSON body: a list of rows (instances, as in TF Serving's
  row format), or ``{"data": rows}`` / ``{"instances": rows}``. The answer is the list of
  predictions: one value per row, or an object per row when the model has several outputs.
- ``GET /ping``: ``{"status": "Healthy"}``, or ``{"status": "Unhealthy"}`` with 503 until the server is ready.
- Errors: ``{"code": <status>, "type": "<TorchServe exception name>", "message": "<message>"}``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel

from gateway.dataplane import DataPlane, InferRequest, InferResponse, InferTensor, ModelMetadata, TensorMetadata
from gateway.datatypes import BYTES, RequestLimits, array_from_values
from gateway.errors import (
    GatewayError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
    http_status,
    openapi_error_responses,
)
from gateway.logs import REQUEST_ID_HEADER, request_id_header
from gateway.repository import ModelState

#: The ``protocol`` labels of these routes' metrics.
TFSERVING_PROTOCOL = "tfserving-rest"
TORCHSERVE_PROTOCOL = "torchserve-rest"
#: The signature every model serves unless its backend says otherwise (TF Serving's default).
DEFAULT_SIGNATURE = "serving_default"

#: v2 datatype -> TensorFlow DataType enum name, for TF Serving's metadata.
_TF_DTYPES = {
    "BOOL": "DT_BOOL",
    "INT8": "DT_INT8",
    "INT16": "DT_INT16",
    "INT32": "DT_INT32",
    "INT64": "DT_INT64",
    "UINT8": "DT_UINT8",
    "UINT16": "DT_UINT16",
    "UINT32": "DT_UINT32",
    "UINT64": "DT_UINT64",
    "FP16": "DT_HALF",
    "FP32": "DT_FLOAT",
    "FP64": "DT_DOUBLE",
    BYTES: "DT_STRING",
}
#: Model states of the repository index -> TF Serving's ModelVersionStatus states.
_TF_STATES = {ModelState.READY: "AVAILABLE", ModelState.LOADING: "LOADING", ModelState.UNAVAILABLE: "END"}
#: HTTP status -> the exception name TorchServe answers with it.
_TORCHSERVE_ERRORS = {
    400: "BadRequestException",
    404: "ModelNotFoundException",
    413: "RequestEntityTooLargeException",
    503: "ServiceUnavailableException",
}

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


# OpenAPI documentation of the routes (they read their bodies raw: FastAPI cannot see the shapes).
class TfServingErrorAnswer(BaseModel):
    """TF Serving's error answer."""

    error: str


class TorchServeErrorAnswer(BaseModel):
    """TorchServe's error answer."""

    code: int
    type: str
    message: str


class PingAnswer(BaseModel):
    """TorchServe's ``GET /ping``: Healthy (200) or Unhealthy (503)."""

    status: str


_JSON_BODY: dict[str, Any] = {"required": True, "content": {"application/json": {"schema": {}}}}
_TF_PREDICT_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "signature_name": {"type": "string"},
                        "instances": {"type": "array", "description": "Row format: one item per instance."},
                        "inputs": {"description": "Columnar format: the only input's value, or {input: value}."},
                    },
                }
            }
        },
    }
}
_TF_PREDICT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "predictions (row format) or outputs (columnar format)",
        "content": {
            "application/json": {
                "schema": {
                    "anyOf": [
                        {
                            "type": "object",
                            "required": ["predictions"],
                            "properties": {"predictions": {"type": "array"}},
                        },
                        {"type": "object", "required": ["outputs"]},
                    ]
                }
            }
        },
    },
    **openapi_error_responses(TfServingErrorAnswer, 400, 404, 413, 500, 503, 504),
}


def compat_router(dataplane: DataPlane) -> APIRouter:
    """The TF Serving and TorchServe routes over ``dataplane``; see the module docstring."""
    router = APIRouter()
    router.include_router(_tfserving_router(dataplane))
    router.include_router(_torchserve_router(dataplane))
    return router


# ----------------------------------------------------------------------------- shared


def _json(content: Any, status_code: int = 200) -> Response:
    """A JSON answer (``NaN``/``Infinity`` written as such), with ``X-Request-ID`` when a request id is set."""
    return Response(
        json.dumps(content, separators=(",", ":")),
        status_code=status_code,
        media_type="application/json",
        headers=request_id_header(),
    )


def _error_route(render: Callable[[GatewayError], Response]) -> type[APIRoute]:
    """A route class whose handlers answer a :class:`GatewayError` with ``render`` (the protocol's error shape)."""

    class ErrorShapedRoute(APIRoute):
        def get_route_handler(self) -> Handler:
            handler = super().get_route_handler()

            async def handle(request: Request) -> Response:
                try:
                    return await handler(request)
                except GatewayError as error:
                    return render(error)

            return handle

    return ErrorShapedRoute


def _parse_json(raw: bytes, limits: RequestLimits) -> Any:
    """The JSON value of a body (``NaN``, ``Infinity`` accepted), its nesting checked before it is parsed.

    Raises:
        InvalidArgumentError: the body is not UTF-8 JSON, or nests deeper than ``limits.max_json_depth``.
    """
    limits.check_json_depth(raw)
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidArgumentError(f"malformed JSON: {error}") from None


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


def _decode_b64(values: Any, name: str) -> Any:
    """``values`` with every ``{"b64": "..."}`` replaced by the bytes it encodes.

    Raises:
        InvalidArgumentError: a ``b64`` value that is not base64.
    """
    if _is_b64(values):
        try:
            return base64.b64decode(values["b64"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise InvalidArgumentError(f"input '{name}': a 'b64' value is not base64") from None
    if isinstance(values, list):
        return [_decode_b64(value, name) for value in values]
    return values


def _nested_shape(values: Any) -> list[int]:
    """The shape nested JSON lists spell (following first elements; ragged lists fail when converted)."""
    shape: list[int] = []
    while isinstance(values, list):
        shape.append(len(values))
        if not values:
            break
        values = values[0]
    return shape


def _tensor(name: str, values: Any, datatypes: dict[str, str], limits: RequestLimits) -> InferTensor:
    """An input tensor from nested JSON values, read as the model's datatype for ``name``.

    Raises:
        InvalidArgumentError: an input the model does not take, values that do not fit the
            datatype, ragged lists, or bad base64.
        PayloadTooLargeError: more elements than ``limits.max_tensor_elements``.
    """
    if name not in datatypes:
        raise InvalidArgumentError(f"unknown input '{name}'; the model takes {', '.join(datatypes)}")
    datatype = datatypes[name]
    if datatype == BYTES:
        values = _decode_b64(values, name)
    shape = _nested_shape(values)
    data = array_from_values(values, datatype, shape, name, limits.max_tensor_elements)
    return InferTensor(name, datatype, shape, data)


def _row_tensors(rows: Any, inputs: list[TensorMetadata], field: str, limits: RequestLimits) -> list[InferTensor]:
    """Input tensors from row-format instances: one item per instance, stacked along dim 0.

    Raises:
        InvalidArgumentError: not a non-empty list, objects with differing keys, plain values for a
            model with several inputs, or values that do not fit.
        PayloadTooLargeError: more inputs than ``limits.max_inputs``, or a tensor over ``max_tensor_elements``.
    """
    if not isinstance(rows, list) or not rows:
        raise InvalidArgumentError(f"'{field}' must be a non-empty list with one item per instance")
    datatypes = {tensor.name: tensor.datatype for tensor in inputs}
    if all(isinstance(row, dict) and not _is_b64(row) for row in rows):
        names = list(rows[0])
        limits.check_tensor_counts(len(names), 0)
        for index, row in enumerate(rows):
            if set(row) != set(names):
                raise InvalidArgumentError(
                    f"'{field}' item {index} names inputs {sorted(row)}, item 0 names {sorted(names)}"
                )
        return [_tensor(name, [row[name] for row in rows], datatypes, limits) for name in names]
    if len(inputs) != 1:
        raise InvalidArgumentError(
            f"the model takes several inputs ({', '.join(datatypes)}): give each item of '{field}' as an "
            "object {input name: value}"
        )
    return [_tensor(inputs[0].name, rows, datatypes, limits)]


def _output_values(tensor: InferTensor) -> Any:
    """An output as nested JSON values; BYTES as text, or ``{"b64": ...}`` when its name ends in ``_bytes``."""
    if tensor.datatype != BYTES:
        return tensor.data.tolist()
    if tensor.name.endswith("_bytes"):
        encoded = np.vectorize(lambda item: {"b64": base64.b64encode(item).decode("ascii")}, otypes=[object])
    else:
        encoded = np.vectorize(lambda item: item.decode("utf-8", "replace"), otypes=[object])
    return encoded(tensor.data).tolist()


def _predictions(response: InferResponse) -> list[Any]:
    """Row-format predictions: the output's items along dim 0, or an object per item for several outputs.

    Raises:
        InvalidArgumentError: an output without a dim 0, or outputs whose dim 0 differ.
    """
    sizes = {tensor.shape[0] if tensor.shape else None for tensor in response.outputs}
    if None in sizes or len(sizes) != 1:
        raise InvalidArgumentError(
            f"the outputs of model '{response.model_name}' do not share a first dim "
            f"({', '.join(f'{t.name} {t.shape}' for t in response.outputs)}); ask in the columnar format ('inputs')"
        )
    columns = {tensor.name: _output_values(tensor) for tensor in response.outputs}
    if len(columns) == 1:
        (values,) = columns.values()
        return list(values)
    return [{name: values[index] for name, values in columns.items()} for index in range(sizes.pop() or 0)]


# ----------------------------------------------------------------------------- TF Serving


def _tfserving_error(error: GatewayError) -> Response:
    return _json({"error": error.message}, http_status(error))


class _TfServingPredict:
    """One TF Serving predict call: decodes the body against the model's signature, answers in the body's format.

    Args:
        dataplane: the data plane, for the model's metadata (its inputs' names and datatypes).
        model_name, model_version: the model addressed (version None: its highest ready one).
        raw: the request body.
    """

    def __init__(self, dataplane: DataPlane, model_name: str, model_version: str | None, raw: bytes) -> None:
        self._dataplane = dataplane
        self._model_name = model_name
        self._model_version = model_version
        self._raw = raw
        self._row_format = True

    def decode(self) -> InferRequest:
        """The data plane's request for the body.

        Raises:
            InvalidArgumentError: malformed JSON; not an object with exactly one of ``instances`` and
                ``inputs``; another signature than the model's; values that do not fit its inputs.
        """
        limits = self._dataplane.limits
        body = _parse_json(self._raw, limits)
        if not isinstance(body, dict):
            raise InvalidArgumentError("the body must be a JSON object with 'instances' or 'inputs'")
        unknown = sorted(set(body) - {"signature_name", "instances", "inputs"})
        if unknown:
            raise InvalidArgumentError(
                f"unknown field(s) {unknown}; expected 'signature_name' and 'instances' or 'inputs'"
            )
        if ("instances" in body) == ("inputs" in body):
            raise InvalidArgumentError("give exactly one of 'instances' (row format) and 'inputs' (columnar format)")
        metadata = self._dataplane.model_metadata(self._model_name, self._model_version)
        signature = _signature_name(metadata)
        asked = body.get("signature_name", signature)
        if asked != signature:
            raise InvalidArgumentError(
                f"model '{self._model_name}' serves signature '{signature}' only, not {json.dumps(asked)}"
            )
        self._row_format = "instances" in body
        if self._row_format:
            tensors = _row_tensors(body["instances"], metadata.inputs, "instances", limits)
        else:
            tensors = _column_tensors(body["inputs"], metadata.inputs, limits)
        return InferRequest(model_name=self._model_name, model_version=self._model_version, inputs=tensors)

    def encode(self, response: InferResponse) -> dict[str, Any]:
        """``{"predictions": ...}`` for the row format, ``{"outputs": ...}`` for the columnar one."""
        if self._row_format:
            return {"predictions": _predictions(response)}
        columns = {tensor.name: _output_values(tensor) for tensor in response.outputs}
        return {"outputs": next(iter(columns.values())) if len(columns) == 1 else columns}


def _column_tensors(columns: Any, inputs: list[TensorMetadata], limits: RequestLimits) -> list[InferTensor]:
    """Input tensors from columnar ``inputs``: an object by input name, or the value of the only input.

    Raises:
        InvalidArgumentError: a plain value for a model with several inputs, or values that do not fit.
        PayloadTooLargeError: more inputs than ``limits.max_inputs``, or a tensor over ``max_tensor_elements``.
    """
    datatypes = {tensor.name: tensor.datatype for tensor in inputs}
    if isinstance(columns, dict) and not _is_b64(columns):
        limits.check_tensor_counts(len(columns), 0)
        return [_tensor(name, values, datatypes, limits) for name, values in columns.items()]
    if len(inputs) != 1:
        raise InvalidArgumentError(
            f"the model takes several inputs ({', '.join(datatypes)}): give 'inputs' as an object {{input name: value}}"
        )
    return [_tensor(inputs[0].name, columns, datatypes, limits)]


def _signature_name(metadata: ModelMetadata) -> str:
    """The signature a model serves: its backend's (tensorflow) or ``serving_default``."""
    return str(metadata.parameters.get("signature_name", DEFAULT_SIGNATURE))


def _tf_tensor_info(tensor: TensorMetadata) -> dict[str, Any]:
    """TF Serving's TensorInfo JSON: name, dtype and shape (sizes as strings, -1 for variable dims)."""
    return {
        "dtype": _TF_DTYPES[tensor.datatype],
        "tensor_shape": {"dim": [{"size": str(size), "name": ""} for size in tensor.shape], "unknown_rank": False},
        "name": tensor.name,
    }


def _tfserving_router(dataplane: DataPlane) -> APIRouter:
    router = APIRouter(prefix="/v1/models", route_class=_error_route(_tfserving_error))

    @router.post("/{model_name}:predict", responses=_TF_PREDICT_RESPONSES, openapi_extra=_TF_PREDICT_OPENAPI)
    @router.post(
        "/{model_name}/versions/{model_version}:predict",
        responses=_TF_PREDICT_RESPONSES,
        openapi_extra=_TF_PREDICT_OPENAPI,
    )
    async def predict(request: Request, model_name: str, model_version: str | None = None) -> Response:
        call = _TfServingPredict(dataplane, model_name, model_version, await request.body())
        body = await dataplane.infer(
            TFSERVING_PROTOCOL,
            model_name,
            model_version,
            decode=call.decode,
            encode=call.encode,
            request_id=request.headers.get(REQUEST_ID_HEADER),
        )
        return _json(body)

    status_responses: dict[int | str, dict[str, Any]] = {
        200: {"content": {"application/json": {"schema": {"type": "object", "required": ["model_version_status"]}}}},
        **openapi_error_responses(TfServingErrorAnswer, 404, 503),
    }

    @router.get("/{model_name}", responses=status_responses)
    @router.get("/{model_name}/versions/{model_version}", responses=status_responses)
    async def model_status(model_name: str, model_version: str | None = None) -> Response:
        entries = [entry for entry in dataplane.repository_index() if entry.name == model_name]
        versions = [entry for entry in entries if entry.version and model_version in (None, entry.version)]
        if not versions:
            if any(entry.state is ModelState.LOADING for entry in entries):
                raise UnavailableError(f"model '{model_name}' is loading")
            reasons = "; ".join(entry.reason for entry in entries if entry.reason)
            which = f"version {model_version} of model" if model_version is not None else "any version of model"
            raise NotFoundError(f"could not find {which} '{model_name}'" + (f": {reasons}" if reasons else ""))
        return _json(
            {
                "model_version_status": [
                    {
                        "version": entry.version,
                        "state": _TF_STATES[entry.state],
                        "status": {
                            "error_code": "UNAVAILABLE" if entry.state is ModelState.UNAVAILABLE else "OK",
                            "error_message": entry.reason if entry.state is ModelState.UNAVAILABLE else "",
                        },
                    }
                    for entry in versions
                ]
            }
        )

    metadata_responses: dict[int | str, dict[str, Any]] = {
        200: {"content": {"application/json": {"schema": {"type": "object", "required": ["model_spec", "metadata"]}}}},
        **openapi_error_responses(TfServingErrorAnswer, 400, 404, 503),
    }

    @router.get("/{model_name}/metadata", responses=metadata_responses)
    @router.get("/{model_name}/versions/{model_version}/metadata", responses=metadata_responses)
    async def model_metadata(model_name: str, model_version: str | None = None) -> Response:
        metadata = dataplane.model_metadata(model_name, model_version)
        signature = {
            "inputs": {tensor.name: _tf_tensor_info(tensor) for tensor in metadata.inputs},
            "outputs": {tensor.name: _tf_tensor_info(tensor) for tensor in metadata.outputs},
            "method_name": "tensorflow/serving/predict",
        }
        version = model_version or max(metadata.versions, key=int)
        return _json(
            {
                "model_spec": {"name": model_name, "signature_name": "", "version": version},
                "metadata": {"signature_def": {"signature_def": {_signature_name(metadata): signature}}},
            }
        )

    return router


# ----------------------------------------------------------------------------- TorchServe


def _torchserve_error(error: GatewayError) -> Response:
    status = http_status(error)
    kind = _TORCHSERVE_ERRORS.get(status, "InternalServerException")
    return _json({"code": status, "type": kind, "message": error.message}, status)


def _torchserve_rows(raw: bytes, limits: RequestLimits) -> Any:
    """The rows of a TorchServe predictions body: a JSON list, or the list under ``data`` or ``instances``.

    Raises:
        InvalidArgumentError: malformed JSON (or nested deeper than the limit), or a body of another shape.
    """
    body = _parse_json(raw, limits)
    if isinstance(body, dict) and len(body) == 1 and ("data" in body or "instances" in body):
        return next(iter(body.values()))
    if isinstance(body, list):
        return body
    raise InvalidArgumentError(
        'the body must be a JSON list of rows, or {"data": [rows]} or {"instances": [rows]}; '
        "a row is the value of the model's only input, or an object {input name: value}"
    )


def _torchserve_router(dataplane: DataPlane) -> APIRouter:
    router = APIRouter(route_class=_error_route(_torchserve_error))

    @router.get("/ping", responses={200: {"model": PingAnswer}, 503: {"model": PingAnswer}})
    async def ping() -> Response:
        ready = dataplane.ready()
        return _json({"status": "Healthy" if ready else "Unhealthy"}, 200 if ready else 503)

    predictions_responses: dict[int | str, dict[str, Any]] = {
        200: {"content": {"application/json": {"schema": {"type": "array"}}}},
        **openapi_error_responses(TorchServeErrorAnswer, 400, 404, 413, 500, 503, 504),
    }
    predictions_openapi = {"requestBody": _JSON_BODY}

    @router.post("/predictions/{model_name}", responses=predictions_responses, openapi_extra=predictions_openapi)
    @router.post(
        "/predictions/{model_name}/{model_version}",
        responses=predictions_responses,
        openapi_extra=predictions_openapi,
    )
    async def predictions(request: Request, model_name: str, model_version: str | None = None) -> Response:
        raw = await request.body()

        def decode() -> InferRequest:
            inputs = dataplane.model_metadata(model_name, model_version).inputs
            tensors = _row_tensors(_torchserve_rows(raw, dataplane.limits), inputs, "data", dataplane.limits)
            return InferRequest(model_name=model_name, model_version=model_version, inputs=tensors)

        body = await dataplane.infer(
            TORCHSERVE_PROTOCOL,
            model_name,
            model_version,
            decode=decode,
            encode=_predictions,
            request_id=request.headers.get(REQUEST_ID_HEADER),
        )
        return _json(body)

    return router
