"""TensorFlow backend (TF Serving-style): serves one signature of a SavedModel in a version folder.

The SavedModel is ``model.savedmodel/`` inside the version folder (Triton's layout, what ``gateway
push`` writes), or the version folder itself (TF Serving's layout: ``<base path>/<version>/saved_model.pb``
and ``variables/``); :func:`saved_model_folder` is the one place that tells them apart.

The signature is ``serving_default`` unless the ``tensorflow:`` options name another. Its inputs are
its keyword arguments, sorted by name; its outputs are the keys of the dict it returns, sorted. Dtypes
and shapes come from the signature (None dims are -1). BYTES tensors are TensorFlow strings.

tensorflow is imported on first load, so a server that serves only ONNX never imports it;
:func:`import_tensorflow` is the one place that imports it, for this backend and for the converters
(which wrap its error in their own).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from backends.base import Backend, InferenceInputError, ModelLoadError, TensorSpec, missing_framework

logger = logging.getLogger(__name__)

ARTIFACT = "model.savedmodel"
#: The file that makes a folder a SavedModel; in a version folder itself, TF Serving's layout.
SAVED_MODEL_FILE = "saved_model.pb"
DEFAULT_SIGNATURE = "serving_default"
#: TF Serving's method name of a prediction signature (what TF2's ``tf.saved_model.save`` writes).
PREDICT_METHOD = "tensorflow/serving/predict"


class TensorFlowOptions(BaseModel):
    """The ``tensorflow:`` section of a model's config.yaml."""

    model_config = ConfigDict(extra="forbid")

    signature_name: str = Field(default=DEFAULT_SIGNATURE, min_length=1, description="The signature served.")
    threads: int = Field(
        default=0,
        ge=0,
        description="TensorFlow's intra-op and inter-op threads; 0: TensorFlow's default. They are set once "
        "per process, before TensorFlow first runs: the first TensorFlow model loaded decides.",
    )


def import_tensorflow() -> Any:
    """Import tensorflow with its C++ logging limited to errors (``TF_CPP_MIN_LOG_LEVEL=2`` unless set).

    Level 2 drops TensorFlow's C++ info and warning lines and keeps its errors. An environment that
    sets ``TF_CPP_MIN_LOG_LEVEL`` itself (e.g. to 3, no errors either) keeps its own level.

    Returns:
        The ``tensorflow`` module.

    Raises:
        ModelLoadError: TensorFlow cannot be imported (the message says what to install:
            ``pip install 'model-gateway[tensorflow]'``).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError as error:
        raise missing_framework("tensorflow", "TensorFlow", error) from None
    return tf


def saved_model_folder(version_path: Path, artifact: str | None = None) -> Path:
    """The SavedModel of a version folder: ``artifact`` in it when given (Triton's ``default_model_filename``),
    else ``model.savedmodel/`` in it, else the folder itself (TF Serving's layout).

    Raises:
        ModelLoadError: none of those holds a ``saved_model.pb``.
    """
    if artifact is not None:
        folder = version_path / artifact
        if (folder / SAVED_MODEL_FILE).is_file():
            return folder
        raise ModelLoadError(f"no SavedModel {artifact}/ (with {SAVED_MODEL_FILE}) in {version_path.name}/")
    for folder in (version_path / ARTIFACT, version_path):
        if (folder / SAVED_MODEL_FILE).is_file():
            return folder
    raise ModelLoadError(
        f"no SavedModel {ARTIFACT}/ (with {SAVED_MODEL_FILE}) in {version_path.name}/, nor a {SAVED_MODEL_FILE} "
        f"in {version_path.name}/ itself (TF Serving's layout)"
    )


def _method_name(folder: Path, signature_name: str) -> str:
    """The ``method_name`` the SavedModel's MetaGraph gives signature ``signature_name`` (TF Serving's metadata).

    TF2's ``tf.saved_model.save`` writes ``tensorflow/serving/predict`` for every signature; TF1's builder
    could write ``.../classify`` or ``.../regress``. The default when the file cannot be read that way.
    """
    from tensorflow.core.protobuf import saved_model_pb2

    try:
        saved_model = saved_model_pb2.SavedModel.FromString((folder / SAVED_MODEL_FILE).read_bytes())
    except Exception:  # a file TensorFlow loaded but whose proto this reading does not parse: keep the default
        return PREDICT_METHOD
    for meta_graph in saved_model.meta_graphs:
        if signature_name in meta_graph.signature_def:
            return str(meta_graph.signature_def[signature_name].method_name) or PREDICT_METHOD
    return PREDICT_METHOD


def _configure_threads(tf: Any, threads: int) -> None:
    """Set TensorFlow's thread pools to ``threads`` (process-wide) unless it is running already."""
    if threads <= 0 or tf.config.threading.get_intra_op_parallelism_threads() == threads:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow's runtime has started: its pools are fixed for the process
        logger.warning(
            "tensorflow threads %d ignored: TensorFlow already runs with %d intra-op threads in this process",
            threads,
            tf.config.threading.get_intra_op_parallelism_threads(),
        )


def _spec(name: str, tensor_spec: Any, what: str) -> TensorSpec:
    """A TensorSpec from a ``tf.TensorSpec``: None dims -> -1, tf.string -> object (BYTES).

    Raises:
        ModelLoadError: an unknown rank, a non-tensor, or a dtype the gateway cannot serve.
    """
    tf = import_tensorflow()
    if not isinstance(tensor_spec, tf.TensorSpec):
        raise ModelLoadError(f"{what} '{name}' is a {type(tensor_spec).__name__}, not a dense tensor")
    if tensor_spec.shape.rank is None:
        raise ModelLoadError(f"{what} '{name}' has an unknown rank; the signature must give it a shape")
    if tensor_spec.dtype == tf.string:
        dtype = np.dtype(np.object_)
    elif tensor_spec.dtype.is_bool or tensor_spec.dtype.is_integer or tensor_spec.dtype.is_floating:
        dtype = np.dtype(tensor_spec.dtype.as_numpy_dtype)
        if dtype.kind not in "biuf":  # bfloat16 is floating for TF, but no v2 datatype
            raise ModelLoadError(f"{what} '{name}' has dtype {tensor_spec.dtype.name}, which the gateway cannot serve")
    else:
        raise ModelLoadError(f"{what} '{name}' has dtype {tensor_spec.dtype.name}, which the gateway cannot serve")
    shape = tuple(-1 if size is None else int(size) for size in tensor_spec.shape.as_list())
    return TensorSpec(name=name, dtype=dtype, shape=shape)


#: Lines of a TensorFlow error message that say where, not what.
_TRACE_LINES = ("Graph execution error", "Detected at node", "<stack traces", "[[", "File ")


def _error_text(error: Exception) -> str:
    """The first line of a TensorFlow error that says what went wrong (not the graph trace around it)."""
    text = getattr(error, "message", None) or str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(_TRACE_LINES)]
    return (useful or lines or [type(error).__name__])[0]


class TensorFlowBackend(Backend):
    """One signature of a version folder's SavedModel (:func:`saved_model_folder`), called with one tensor per input.

    Raises (from the constructor):
        ModelLoadError: TensorFlow is not installed, the folder is missing or does not load, the
            signature does not exist (the message lists those that do), or it takes positional
            arguments, does not return a dict of named tensors, or has a tensor the gateway cannot serve.
    """

    platform = "tensorflow_savedmodel"

    def __init__(self, version_path: Path, options: TensorFlowOptions, artifact: str | None = None) -> None:
        tf = import_tensorflow()
        folder = saved_model_folder(version_path, artifact)
        shown = f"{version_path.name}/{folder.name if folder != version_path else ''}"
        _configure_threads(tf, options.threads)
        try:
            self._loaded = tf.saved_model.load(str(folder))
        except Exception as error:  # TensorFlow raises many types for a bad folder
            raise ModelLoadError(f"TensorFlow cannot load {shown}: {type(error).__name__}: {error}") from None
        signatures = dict(self._loaded.signatures)
        if options.signature_name not in signatures:
            available = ", ".join(sorted(signatures)) or "none"
            raise ModelLoadError(
                f"{shown} has no signature '{options.signature_name}' (its signatures: {available}); "
                "set tensorflow: {signature_name: ...} in config.yaml"
            )
        self._function = signatures[options.signature_name]
        self.signature_name = options.signature_name
        self.method_name = _method_name(folder, self.signature_name)
        positional, keyword = self._function.structured_input_signature
        if positional:
            raise ModelLoadError(f"signature '{self.signature_name}' takes positional inputs; only named ones serve")
        self._inputs = [_spec(name, keyword[name], "input") for name in sorted(keyword)]
        returned = self._function.structured_outputs
        if not isinstance(returned, Mapping):
            raise ModelLoadError(f"signature '{self.signature_name}' does not return a dict of named outputs")
        self._outputs = [_spec(str(name), returned[name], "output") for name in sorted(returned)]
        self._tf_dtypes = {name: spec.dtype for name, spec in keyword.items()}
        self._errors: tuple[type[Exception], ...] = (tf.errors.InvalidArgumentError, ValueError, TypeError)
        logger.info(
            "loaded %s signature %s with %s intra-op threads",
            folder,
            self.signature_name,
            tf.config.threading.get_intra_op_parallelism_threads() or "TensorFlow's default number of",
        )

    @property
    def metadata_parameters(self) -> dict[str, Any]:
        """``{"signature_name": ..., "method_name": ...}``: the signature served and its TF Serving method name."""
        return {"signature_name": self.signature_name, "method_name": self.method_name}

    def run(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
        """Call the signature; string outputs come back as ``object`` arrays of ``bytes``.

        Raises:
            InferenceInputError: TensorFlow rejected the inputs (e.g. sizes that do not fit together).
        """
        tf = import_tensorflow()
        try:
            tensors = {name: tf.convert_to_tensor(array, dtype=self._tf_dtypes[name]) for name, array in inputs.items()}
            results = self._function(**tensors)
        except self._errors as error:
            raise InferenceInputError(f"TensorFlow: {_error_text(error)}") from error
        return {name: np.asarray(results[name].numpy()) for name in output_names}
