"""TF Serving's gRPC API: ``tensorflow.serving.PredictionService`` and ``ModelService`` over the core.

Clients written for TensorFlow Serving (tensorflow-serving-api's ``PredictionServiceStub`` and
``ModelServiceStub``) call the gateway's gRPC port unchanged, for any model it serves. The messages are
the gateway's own subset of TF Serving's protos (``protos/tfserving/``, :mod:`protos.tfserving`), with
TF Serving's full names and field numbers. Every inference goes through
:meth:`gateway.core.dataplane.DataPlane.infer` (protocol label ``tfserving-grpc``); tensors are decoded
and encoded by :mod:`gateway.transports.grpc.tfserving_codec`. Errors are aborted with the status code of
:mod:`gateway.errors`' one table (unknown model or version: NOT_FOUND; unknown version label or bad
tensor: INVALID_ARGUMENT, as TF Serving).

A request's ``ModelSpec`` names the model, and optionally its ``version`` or ``version_label`` (one of
the model's version labels, from models.config or config.yaml); without either, the highest version
served answers. ``signature_name`` may be empty or the one signature the model serves
(``serving_default``, or the one its tensorflow config names).

- ``Predict``: ``inputs`` by name, ``output_filter`` (default: every output).
- ``GetModelMetadata``: ``metadata_field`` must be ``["signature_def"]``; the answer's
  ``metadata["signature_def"]`` is a ``SignatureDefMap`` packed in a ``google.protobuf.Any``, with the one
  signature served (inputs and outputs with TF dtypes and shapes, -1 for variable dims, and its method name).
- ``Classify`` and ``Regress``: for a model whose signature takes serialized ``tf.Example``\\ s, see
  :func:`classification_outputs` and :func:`regression_outputs`. Each example of ``input.example_list`` is
  fed serialized, one per row; with ``example_list_with_context`` each is merged over the context first (as
  TF Serving does, the example's features win).
- ``GetModelStatus`` (ModelService): each version's state (AVAILABLE, LOADING, END) and status.

``MultiInference`` and ``HandleReloadConfigRequest`` are not served: gRPC answers UNIMPLEMENTED.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from gateway.core.dataplane import DataPlane
from gateway.core.repository_control import RepositoryControl
from gateway.core.types import (
    PREDICT_METHOD,
    InferRequest,
    InferResponse,
    InferTensor,
    ModelMetadata,
    RequestedOutput,
    TensorMetadata,
)
from gateway.datatypes import BYTES
from gateway.errors import InvalidArgumentError
from gateway.logs import current_request_id
from gateway.repository.model_repository import ModelState
from gateway.transports.grpc.servicer import REQUEST_ID_KEY, Context, _abort_on_error, _metadata_value
from gateway.transports.grpc.tfserving_codec import decode_tensor, encode_tensor, tensor_shape, tf_dtype_number
from protos import tfserving as pb
from protos.messages import ProtoMessage

#: The ``protocol`` label of these services' metrics.
PROTOCOL = "tfserving-grpc"
#: The one ``metadata_field`` GetModelMetadata answers (TF Serving's only one).
SIGNATURE_DEF_FIELD = "signature_def"
#: The type URL of a ``SignatureDefMap`` packed in a ``google.protobuf.Any``.
SIGNATURE_DEF_MAP_TYPE_URL = "type.googleapis.com/tensorflow.serving.SignatureDefMap"
#: TF Serving's output keys of classification and regression signatures.
CLASSES, SCORES, REGRESSION_OUTPUTS = "classes", "scores", "outputs"
#: Method names of TF Serving's classification and regression signatures.
CLASSIFY_METHOD, REGRESS_METHOD = "tensorflow/serving/classify", "tensorflow/serving/regress"


class ModelAddress:
    """The model a ``ModelSpec`` addresses: name, and version or version label (both None: the highest served).

    Raises (from the constructor):
        InvalidArgumentError: no model name, or a negative version.
    """

    def __init__(self, spec: ProtoMessage) -> None:
        if not spec.name:
            raise InvalidArgumentError("model_spec.name is required")
        self.name: str = spec.name
        choice = spec.WhichOneof("version_choice")
        if choice == "version" and spec.version.value < 0:
            raise InvalidArgumentError(f"model_spec.version {spec.version.value} is negative")
        self.version: str | None = str(spec.version.value) if choice == "version" else None
        self.label: str | None = spec.version_label if choice == "version_label" else None
        self.signature_name: str = spec.signature_name

    def check_signature(self, metadata: ModelMetadata) -> None:
        """Accept an empty ``signature_name`` or the model's one.

        Raises:
            InvalidArgumentError: another signature (the message names the one served).
        """
        if self.signature_name not in ("", metadata.signature_name):
            raise InvalidArgumentError(
                f'Serving signature name: "{self.signature_name}" not found in signature def '
                f"(model '{self.name}' serves '{metadata.signature_name}')"
            )


def model_spec(name: str, version: str, signature_name: str = "") -> ProtoMessage:
    """The ``ModelSpec`` of an answer: the model, the version that answered, and the signature."""
    spec = pb.ModelSpec(name=name, signature_name=signature_name)
    spec.version.value = int(version)
    return spec


def signature_def(metadata: ModelMetadata) -> ProtoMessage:
    """The served signature as TensorFlow's ``SignatureDef``: TensorInfo (name, dtype, shape) by key, method name."""

    def tensor_info(tensor: TensorMetadata) -> ProtoMessage:
        return pb.TensorInfo(
            name=tensor.name, dtype=tf_dtype_number(tensor.datatype), tensor_shape=tensor_shape(tensor.shape)
        )

    signature = pb.SignatureDef(method_name=metadata.method_name)
    for tensor in metadata.inputs:
        signature.inputs[tensor.name].CopyFrom(tensor_info(tensor))
    for tensor in metadata.outputs:
        signature.outputs[tensor.name].CopyFrom(tensor_info(tensor))
    return signature


def classification_outputs(metadata: ModelMetadata) -> list[str]:
    """The outputs Classify reads (``classes``, ``scores`` or both), for a model that qualifies.

    A model qualifies when its served signature takes one input, a vector of strings (shape ``[-1]``,
    the serialized ``tf.Example``\\ s, one per row), and has an output ``scores`` (FP32, ``[batch,
    classes]``) or ``classes`` (BYTES, the same shape) or both, as TF Serving's classification signatures
    do; its method name is ``tensorflow/serving/classify``, or ``.../predict`` (TF2's ``tf.saved_model.save``
    writes that for every signature).

    Raises:
        InvalidArgumentError: the model does not qualify (the message says why).
    """
    _check_example_input(metadata, CLASSIFY_METHOD, "Classify")
    outputs = {tensor.name: tensor for tensor in metadata.outputs}
    wanted = {CLASSES: BYTES, SCORES: "FP32"}
    present = [name for name in (CLASSES, SCORES) if name in outputs]
    if not present or any(outputs[name].datatype != wanted[name] for name in present):
        raise InvalidArgumentError(
            f"model '{metadata.name}' cannot Classify: its signature needs an output 'scores' (FP32) and/or "
            f"'classes' (BYTES), and has {_described(metadata.outputs)}"
        )
    return present


def regression_outputs(metadata: ModelMetadata) -> list[str]:
    """The output Regress reads, ``["outputs"]``, for a model that qualifies.

    A model qualifies when its served signature takes one input, a vector of strings (shape ``[-1]``,
    serialized ``tf.Example``\\ s), and has an FP32 output ``outputs`` of shape ``[batch]`` or ``[batch, 1]``,
    as TF Serving's regression signatures do; method name ``tensorflow/serving/regress`` or ``.../predict``.

    Raises:
        InvalidArgumentError: the model does not qualify (the message says why).
    """
    _check_example_input(metadata, REGRESS_METHOD, "Regress")
    output = next((tensor for tensor in metadata.outputs if tensor.name == REGRESSION_OUTPUTS), None)
    if (
        output is None
        or output.datatype != "FP32"
        or len(output.shape) not in (1, 2)
        or output.shape[1:] not in ([], [1])
    ):
        raise InvalidArgumentError(
            f"model '{metadata.name}' cannot Regress: its signature needs an output 'outputs' (FP32, [batch] or "
            f"[batch, 1]), and has {_described(metadata.outputs)}"
        )
    return [REGRESSION_OUTPUTS]


def _check_example_input(metadata: ModelMetadata, method: str, rpc: str) -> None:
    """Check that the signature takes serialized examples, and that its method is ``method`` or predict.

    Raises:
        InvalidArgumentError: it does not.
    """
    if metadata.method_name not in (method, PREDICT_METHOD):
        raise InvalidArgumentError(
            f"model '{metadata.name}' cannot {rpc}: expected signature method_name {method}, was {metadata.method_name}"
        )
    inputs = metadata.inputs
    if len(inputs) != 1 or inputs[0].datatype != BYTES or len(inputs[0].shape) != 1:
        raise InvalidArgumentError(
            f"model '{metadata.name}' cannot {rpc}: its signature must take one input of serialized tf.Examples "
            f"(BYTES, shape [-1]), and takes {_described(inputs)}"
        )


def _described(tensors: list[TensorMetadata]) -> str:
    return ", ".join(f"'{t.name}' ({t.datatype} {t.shape})" for t in tensors) or "none"


def serialized_examples(request_input: ProtoMessage) -> np.ndarray:
    """The examples of a Classify/Regress ``Input``, serialized, as an ``object`` array of ``bytes`` (one per row).

    With ``example_list_with_context``, each example is merged over the context (a feature both have is
    the example's), as TF Serving does.

    Raises:
        InvalidArgumentError: no examples.
    """
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        examples = [example.SerializeToString() for example in request_input.example_list.examples]
    elif kind == "example_list_with_context":
        listed = request_input.example_list_with_context
        examples = []
        for example in listed.examples:
            merged = pb.Example()
            merged.CopyFrom(listed.context)
            merged.MergeFrom(example)  # map entries of the example replace the context's
            examples.append(merged.SerializeToString())
    else:
        examples = []
    if not examples:
        raise InvalidArgumentError("Input is empty: give input.example_list or input.example_list_with_context")
    array = np.empty(len(examples), dtype=object)
    array[:] = examples
    return array


class PredictionServicer:
    """``tensorflow.serving.PredictionService`` (Predict, GetModelMetadata, Classify, Regress) over the core.

    Args:
        dataplane: answers metadata and inference.
    """

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    async def _infer(
        self,
        address: ModelAddress,
        context: Context,
        decode: Any,
        encode: Any,
    ) -> ProtoMessage:
        """One inference through the data plane, its request id in the trailing metadata."""
        response: ProtoMessage = await self.dataplane.infer(
            PROTOCOL,
            address.name,
            address.version,
            decode=decode,
            encode=encode,
            request_id=_metadata_value(context, REQUEST_ID_KEY),
            timeout_seconds=context.time_remaining(),
            version_label=address.label,
        )
        context.set_trailing_metadata(((REQUEST_ID_KEY, current_request_id() or ""),))
        return response

    def _metadata(self, address: ModelAddress) -> ModelMetadata:
        metadata = self.dataplane.model_metadata(address.name, address.version, address.label)
        address.check_signature(metadata)
        return metadata

    @_abort_on_error
    async def Predict(self, request: ProtoMessage, context: Context) -> ProtoMessage:
        """TF Serving's Predict: ``inputs`` by name in, the outputs (all, or ``output_filter``'s) out.

        The call's gRPC deadline bounds the request, as for KServe's ModelInfer.
        """
        address = ModelAddress(request.model_spec)
        limits = self.dataplane.limits
        served: list[ModelMetadata] = []

        def decode() -> InferRequest:
            served.append(self._metadata(address))
            limits.check_tensor_counts(len(request.inputs), len(request.output_filter))
            return InferRequest(
                model_name=address.name,
                model_version=address.version,
                inputs=[decode_tensor(name, tensor, limits) for name, tensor in request.inputs.items()],
                outputs=[RequestedOutput(name) for name in request.output_filter],
            )

        def encode(answer: InferResponse) -> ProtoMessage:
            signature = served[0].signature_name
            message = pb.PredictResponse(model_spec=model_spec(address.name, answer.model_version, signature))
            for tensor in answer.outputs:
                message.outputs[tensor.name].CopyFrom(encode_tensor(tensor))
            return message

        return await self._infer(address, context, decode, encode)

    @_abort_on_error
    async def GetModelMetadata(self, request: ProtoMessage, context: Context) -> ProtoMessage:
        """TF Serving's GetModelMetadata: the served signature in a ``SignatureDefMap`` packed in an ``Any``.

        Raises:
            InvalidArgumentError: no ``metadata_field``, or one other than ``signature_def``.
        """
        address = ModelAddress(request.model_spec)
        if not request.metadata_field:
            raise InvalidArgumentError("GetModelMetadataRequest must specify at least one metadata_field")
        unsupported = [field for field in request.metadata_field if field != SIGNATURE_DEF_FIELD]
        if unsupported:
            raise InvalidArgumentError(f"Metadata field {unsupported[0]} is not supported")
        version = address.version
        if address.label is not None:
            version = self.dataplane.version_for_label(address.name, address.label)
        metadata = self.dataplane.model_metadata(address.name, version)
        address.check_signature(metadata)
        signatures = pb.SignatureDefMap()
        signatures.signature_def[metadata.signature_name].CopyFrom(signature_def(metadata))
        answer = pb.GetModelMetadataResponse(
            model_spec=model_spec(address.name, version or max(metadata.versions, key=int))
        )
        packed = answer.metadata[SIGNATURE_DEF_FIELD]
        packed.type_url = SIGNATURE_DEF_MAP_TYPE_URL
        packed.value = signatures.SerializeToString()
        return answer

    @_abort_on_error
    async def Classify(self, request: ProtoMessage, context: Context) -> ProtoMessage:
        """TF Serving's Classify: per example, its classes and scores; see :func:`classification_outputs`."""
        return await self._infer_examples(
            request, context, classification_outputs, pb.ClassificationResponse, _fill_classifications
        )

    @_abort_on_error
    async def Regress(self, request: ProtoMessage, context: Context) -> ProtoMessage:
        """TF Serving's Regress: one value per example; see :func:`regression_outputs`."""
        return await self._infer_examples(
            request, context, regression_outputs, pb.RegressionResponse, _fill_regressions
        )

    async def _infer_examples(
        self,
        request: ProtoMessage,
        context: Context,
        qualifying_outputs: Callable[[ModelMetadata], list[str]],
        response_class: type[ProtoMessage],
        fill: Callable[[ProtoMessage, dict[str, np.ndarray]], None],
    ) -> ProtoMessage:
        """A Classify or Regress: the examples in as the model's one input, its ``result`` filled from the outputs."""
        address = ModelAddress(request.model_spec)
        metadata = self._metadata(address)
        outputs = qualifying_outputs(metadata)

        def decode() -> InferRequest:
            return self._examples_request(address, metadata, request.input, outputs)

        def encode(answer: InferResponse) -> ProtoMessage:
            message = response_class(model_spec=model_spec(address.name, answer.model_version, metadata.signature_name))
            fill(message.result, {tensor.name: tensor.data for tensor in answer.outputs})
            return message

        return await self._infer(address, context, decode, encode)

    def _examples_request(
        self, address: ModelAddress, metadata: ModelMetadata, request_input: ProtoMessage, outputs: list[str]
    ) -> InferRequest:
        """The data plane's request of a Classify/Regress: the serialized examples as the model's one input."""
        examples = serialized_examples(request_input)
        self.dataplane.limits.check_tensor_counts(1, len(outputs))
        return InferRequest(
            model_name=address.name,
            model_version=address.version,
            inputs=[InferTensor(metadata.inputs[0].name, BYTES, [len(examples)], examples)],
            outputs=[RequestedOutput(name) for name in outputs],
        )


def _fill_classifications(result: ProtoMessage, outputs: dict[str, np.ndarray]) -> None:
    """Fill a ``ClassificationResult``: per example (row), a ``Class`` (label, score) per column of the outputs.

    Raises:
        InvalidArgumentError: an output that is not ``[batch, classes]``, or two that disagree (as TF Serving).
    """
    classes, scores = outputs.get(CLASSES), outputs.get(SCORES)
    shapes = {tensor.shape for tensor in (classes, scores) if tensor is not None}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise InvalidArgumentError(
            f"the classification outputs must both have shape [batch, classes]; got {sorted(shapes)}"
        )
    rows, columns = next(iter(shapes))
    for row in range(rows):
        classifications = result.classifications.add()
        for column in range(columns):
            label = classes[row, column] if classes is not None else b""
            classifications.classes.add(
                label=label.decode("utf-8", "replace") if isinstance(label, bytes) else str(label),
                score=float(scores[row, column]) if scores is not None else 0.0,
            )


def _fill_regressions(result: ProtoMessage, outputs: dict[str, np.ndarray]) -> None:
    """Fill a ``RegressionResult``: one ``Regression`` per example (row) of the ``outputs`` output."""
    values = outputs[REGRESSION_OUTPUTS]
    for value in values.reshape(values.shape[0], -1)[:, 0]:
        result.regressions.add(value=float(value))


class ModelStatusServicer:
    """``tensorflow.serving.ModelService``'s GetModelStatus over the core.

    Args:
        dataplane: resolves version labels.
        control: answers the versions' states.
    """

    def __init__(self, dataplane: DataPlane, control: RepositoryControl) -> None:
        self.dataplane = dataplane
        self.control = control

    @_abort_on_error
    async def GetModelStatus(self, request: ProtoMessage, context: Context) -> ProtoMessage:
        """The state of each version of the model (or of the version or label asked): AVAILABLE, LOADING or END.

        A version that failed to load, or that the version policy does not serve, is END with error code
        UNAVAILABLE and the reason.
        """
        address = ModelAddress(request.model_spec)
        version = address.version
        if address.label is not None:
            version = self.dataplane.version_for_label(address.name, address.label)
        answer = pb.GetModelStatusResponse()
        for entry in self.control.version_status(address.name, version):
            failed = entry.state is ModelState.UNAVAILABLE
            answer.model_version_status.add(
                version=int(entry.version),
                state=pb.ModelVersionStatus.State.Value(entry.state.tf_serving_name),
                status=pb.StatusProto(
                    error_code=pb.ErrorCode.values_by_name["UNAVAILABLE" if failed else "OK"].number,
                    error_message=entry.reason if failed else "",
                ),
            )
        return answer
