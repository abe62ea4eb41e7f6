"""TF Serving's REST API: a thin adapter over the same core as KServe v2.

Clients written for TensorFlow Serving's REST API call the gateway unchanged, for any model it serves
(whatever its backend). Every prediction goes through :meth:`gateway.core.dataplane.DataPlane.infer`
(protocol label ``tfserving-rest``), so checks, scheduling, metrics and request ids are those of v2;
these routes only translate JSON (:mod:`gateway.transports.rest.rows`).

Routes (https://www.tensorflow.org/tfx/serving/api_rest):

- ``POST /v1/models/{m}[/versions/{v}|/labels/{label}]:predict`` with ``{"signature_name"?, "instances": ...}`` (row
  format: one item per instance along dim 0; a plain value per instance when the model has one
  input, else an object ``{input: value}`` per instance) or ``{"signature_name"?, "inputs": ...}``
  (columnar: one value for a single input, else an object ``{input: value}``). The answer is
  ``{"predictions": ...}`` (one value per instance, or an object per instance when the model has
  several outputs) or ``{"outputs": ...}`` (one value, or an object by output name). BYTES values are
  strings or ``{"b64": "..."}``; BYTES outputs whose name ends in ``_bytes`` answer ``{"b64": "..."}``.
  ``NaN`` and ``Infinity`` are valid numbers, as in TF Serving. The only signature of a model is
  ``serving_default`` (or, for the tensorflow backend, the one its config names).
- ``GET /v1/models/{m}[/versions/{v}|/labels/{label}]``: ``{"model_version_status": [{"version", "state", "status":
  {"error_code", "error_message"}}]}`` (AVAILABLE, LOADING, or END with the load error).
- ``GET /v1/models/{m}[/versions/{v}|/labels/{label}]/metadata``: ``{"model_spec", "metadata": {"signature_def":
  {"signature_def": {<signature>: {"inputs", "outputs", "method_name"}}}}}`` with TF dtypes.
- A label is one of the model's version labels (``version_labels`` in models.config or config.yaml); an
  unknown one is 400, "Unrecognized servable version label", as in TF Serving.
- Errors: ``{"error": "<message>"}`` with the status of :mod:`gateway.errors`.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request, Response

from gateway.core.dataplane import DataPlane
from gateway.core.repository_control import RepositoryControl
from gateway.core.types import InferRequest, InferResponse, InferTensor, TensorMetadata
from gateway.datatypes import V2_TO_TF_DTYPE, RequestLimits
from gateway.errors import GatewayError, InvalidArgumentError
from gateway.logs import REQUEST_ID_HEADER
from gateway.repository.model_repository import ModelState
from gateway.transports.rest.openapi import error_responses
from gateway.transports.rest.responses import JSON, error_response, error_shaped_route, json_response
from gateway.transports.rest.rows import (
    is_b64,
    output_values,
    parse_json,
    row_predictions,
    row_tensors,
    tensor_from_values,
)

#: The ``protocol`` label of these routes' metrics.
PROTOCOL = "tfserving-rest"


def _error_response(error: GatewayError) -> Response:
    """TF Serving's error body: ``{"error": message}``, with the status of :mod:`gateway.errors`."""
    return error_response(error).to_response()


_TF_PREDICT_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            JSON: {
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
            JSON: {
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
    **error_responses(400, 404, 413, 500, 503, 504),
}


class _TfServingPredict:
    """One TF Serving predict call: decodes the body against the model's signature, answers in the body's format.

    Args:
        dataplane: the data plane, for the model's metadata (its inputs' names and datatypes).
        model_name, model_version: the model addressed (version None: its highest ready one).
        version_label: the model's version label naming the version instead, or None.
        raw: the request body.
    """

    def __init__(
        self, dataplane: DataPlane, model_name: str, model_version: str | None, version_label: str | None, raw: bytes
    ) -> None:
        self._dataplane = dataplane
        self._model_name = model_name
        self._model_version = model_version
        self._version_label = version_label
        self._raw = raw
        self._row_format = True

    def decode(self) -> InferRequest:
        """The data plane's request for the body.

        Raises:
            InvalidArgumentError: malformed JSON; not an object with exactly one of ``instances`` and
                ``inputs``; another signature than the model's; values that do not fit its inputs.
        """
        limits = self._dataplane.limits
        body = parse_json(self._raw, limits)
        if not isinstance(body, dict):
            raise InvalidArgumentError("the body must be a JSON object with 'instances' or 'inputs'")
        unknown = sorted(set(body) - {"signature_name", "instances", "inputs"})
        if unknown:
            raise InvalidArgumentError(
                f"unknown field(s) {unknown}; expected 'signature_name' and 'instances' or 'inputs'"
            )
        if ("instances" in body) == ("inputs" in body):
            raise InvalidArgumentError("give exactly one of 'instances' (row format) and 'inputs' (columnar format)")
        metadata = self._dataplane.model_metadata(self._model_name, self._model_version, self._version_label)
        signature = metadata.signature_name
        asked = body.get("signature_name", signature)
        if asked != signature:
            raise InvalidArgumentError(
                f"model '{self._model_name}' serves signature '{signature}' only, not {json.dumps(asked)}"
            )
        self._row_format = "instances" in body
        if self._row_format:
            tensors = row_tensors(body["instances"], metadata.inputs, "instances", limits)
        else:
            tensors = _column_tensors(body["inputs"], metadata.inputs, limits)
        return InferRequest(model_name=self._model_name, model_version=self._model_version, inputs=tensors)

    def encode(self, response: InferResponse) -> dict[str, Any]:
        """``{"predictions": ...}`` for the row format, ``{"outputs": ...}`` for the columnar one."""
        if self._row_format:
            return {"predictions": row_predictions(response)}
        columns = {tensor.name: output_values(tensor) for tensor in response.outputs}
        return {"outputs": next(iter(columns.values())) if len(columns) == 1 else columns}


def _column_tensors(columns: Any, inputs: list[TensorMetadata], limits: RequestLimits) -> list[InferTensor]:
    """Input tensors from columnar ``inputs``: an object by input name, or the value of the only input.

    Raises:
        InvalidArgumentError: a plain value for a model with several inputs, or values that do not fit.
        PayloadTooLargeError: more inputs than ``limits.max_inputs``, or a tensor over ``max_tensor_elements``.
    """
    datatypes = {tensor.name: tensor.datatype for tensor in inputs}
    if isinstance(columns, dict) and not is_b64(columns):
        limits.check_tensor_counts(len(columns), 0)
        return [tensor_from_values(name, values, datatypes, limits) for name, values in columns.items()]
    if len(inputs) != 1:
        raise InvalidArgumentError(
            f"the model takes several inputs ({', '.join(datatypes)}): give 'inputs' as an object {{input name: value}}"
        )
    return [tensor_from_values(inputs[0].name, columns, datatypes, limits)]


def _tf_tensor_info(tensor: TensorMetadata) -> dict[str, Any]:
    """TF Serving's TensorInfo JSON: name, dtype and shape (sizes as strings, -1 for variable dims)."""
    return {
        "dtype": V2_TO_TF_DTYPE[tensor.datatype],
        "tensor_shape": {"dim": [{"size": str(size), "name": ""} for size in tensor.shape], "unknown_rank": False},
        "name": tensor.name,
    }


def tfserving_router(dataplane: DataPlane, control: RepositoryControl) -> APIRouter:
    """TF Serving's REST routes (predict, model status, metadata) over the core; see the module docstring."""
    router = APIRouter(prefix="/v1/models", route_class=error_shaped_route(_error_response))

    @router.post("/{model_name}:predict", responses=_TF_PREDICT_RESPONSES, openapi_extra=_TF_PREDICT_OPENAPI)
    @router.post(
        "/{model_name}/versions/{model_version}:predict",
        responses=_TF_PREDICT_RESPONSES,
        openapi_extra=_TF_PREDICT_OPENAPI,
    )
    @router.post(
        "/{model_name}/labels/{version_label}:predict",
        responses=_TF_PREDICT_RESPONSES,
        openapi_extra=_TF_PREDICT_OPENAPI,
    )
    async def predict(
        request: Request, model_name: str, model_version: str | None = None, version_label: str | None = None
    ) -> Response:
        call = _TfServingPredict(dataplane, model_name, model_version, version_label, await request.body())
        body = await dataplane.infer(
            PROTOCOL,
            model_name,
            model_version,
            decode=call.decode,
            encode=call.encode,
            request_id=request.headers.get(REQUEST_ID_HEADER),
            version_label=version_label,
        )
        return json_response(body)

    status_responses: dict[int | str, dict[str, Any]] = {
        200: {"content": {JSON: {"schema": {"type": "object", "required": ["model_version_status"]}}}},
        **error_responses(400, 404, 503),
    }

    @router.get("/{model_name}", responses=status_responses)
    @router.get("/{model_name}/versions/{model_version}", responses=status_responses)
    @router.get("/{model_name}/labels/{version_label}", responses=status_responses)
    async def model_status(
        model_name: str, model_version: str | None = None, version_label: str | None = None
    ) -> Response:
        if version_label is not None:
            model_version = dataplane.version_for_label(model_name, version_label)
        return json_response(
            {
                "model_version_status": [
                    {
                        "version": entry.version,
                        "state": entry.state.tf_serving_name,
                        "status": {
                            "error_code": "UNAVAILABLE" if entry.state is ModelState.UNAVAILABLE else "OK",
                            "error_message": entry.reason if entry.state is ModelState.UNAVAILABLE else "",
                        },
                    }
                    for entry in control.version_status(model_name, model_version)
                ]
            }
        )

    metadata_responses: dict[int | str, dict[str, Any]] = {
        200: {"content": {JSON: {"schema": {"type": "object", "required": ["model_spec", "metadata"]}}}},
        **error_responses(400, 404, 503),
    }

    @router.get("/{model_name}/metadata", responses=metadata_responses)
    @router.get("/{model_name}/versions/{model_version}/metadata", responses=metadata_responses)
    @router.get("/{model_name}/labels/{version_label}/metadata", responses=metadata_responses)
    async def model_metadata(
        model_name: str, model_version: str | None = None, version_label: str | None = None
    ) -> Response:
        if version_label is not None:
            model_version = dataplane.version_for_label(model_name, version_label)
        metadata = dataplane.model_metadata(model_name, model_version)
        signature = {
            "inputs": {tensor.name: _tf_tensor_info(tensor) for tensor in metadata.inputs},
            "outputs": {tensor.name: _tf_tensor_info(tensor) for tensor in metadata.outputs},
            "method_name": metadata.method_name,
        }
        version = model_version or max(metadata.versions, key=int)
        return json_response(
            {
                "model_spec": {"name": model_name, "signature_name": "", "version": version},
                "metadata": {"signature_def": {"signature_def": {metadata.signature_name: signature}}},
            }
        )

    return router
