"""A model's ``config.yaml``: validation, version policy, and completion from the artifact.

``config.yaml`` sits in the model folder, beside the integer version folders, and applies to every
version. All of it is optional: without it, or without ``inputs``/``outputs``, the config is completed
from what the backend reads in the artifact (names, datatypes, shapes and the batch dimension), as
Triton does without a strict config. Field meanings follow Triton's model configuration:
``max_batch_size > 0`` means the first dimension of every input and output is the batch, left out of
``dims`` and shown as -1 in metadata; ``0`` means the model takes no batch dimension.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from backends import Backend, DeclaredSignature, TensorSpec
from backends.onnxruntime import OnnxRuntimeOptions
from backends.pytorch import TorchOptions
from backends.tensorflow_savedmodel import TensorFlowOptions
from gateway.datatypes import V2_TO_NUMPY, v2_datatype

CONFIG_FILE = "config.yaml"

Datatype = Literal[
    "BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64",
    "FP16", "FP32", "FP64", "BYTES",
]  # fmt: skip


assert set(get_args(Datatype)) == set(V2_TO_NUMPY), "Datatype must list exactly the v2 datatypes"


class ModelConfigError(Exception):
    """config.yaml is not valid YAML, breaks the schema, or does not match the artifact."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorConfig(_Strict):
    """One input or output: name, v2 datatype, dims (without the batch dim; -1: variable) and reshape.

    ``reshape`` (Triton's) is the shape the model itself takes or gives, without the batch dim, when it
    differs from ``dims``, the shape clients send and receive: e.g. dims ``[1]`` for a model taking a
    scalar per item (reshape ``[]``), or dims ``[784]`` for one taking ``[28, 28]``. The tensor keeps
    its elements and their order (a numpy reshape of each request's batch).
    """

    name: str = Field(min_length=1)
    datatype: Datatype
    dims: list[int] = Field(description="Dims without the batch dimension; -1 for a variable size.")
    reshape: list[int] | None = Field(
        default=None, description="The shape the model takes (or gives), without the batch dim, if not dims."
    )

    @model_validator(mode="after")
    def _check_dims(self) -> TensorConfig:
        if any(dim < -1 for dim in self.dims):
            raise ValueError(f"dims {self.dims}: each dim is -1 (variable) or a size >= 0")
        if self.reshape is not None:
            _check_reshape(self.dims, self.reshape)
        return self

    @property
    def model_dims(self) -> list[int]:
        """The dims the model itself has: ``reshape`` when given, else ``dims``."""
        return list(self.dims if self.reshape is None else self.reshape)


def _check_reshape(dims: list[int], reshape: list[int]) -> None:
    """Check that every tensor of ``dims`` can be reshaped to ``reshape`` and back (numpy's rules).

    Raises:
        ValueError: a dim below -1, or the two shapes cannot hold the same elements: fixed shapes of
            other sizes, or variable dims on one side only or more than one on a side.
    """
    if any(dim < -1 for dim in reshape):
        raise ValueError(f"reshape {reshape}: each dim is -1 (variable) or a size >= 0")
    variable = (dims.count(-1), reshape.count(-1))
    if variable == (0, 0):
        if math.prod(dims) != math.prod(reshape):
            raise ValueError(
                f"reshape {reshape} holds {math.prod(reshape)} elements, dims {dims} hold {math.prod(dims)}"
            )
    elif variable != (1, 1):
        raise ValueError(
            f"reshape {reshape} of dims {dims}: a variable size (-1) must appear once on both sides, or not at all"
        )


class LatestPolicy(_Strict):
    """Serve the ``num_versions`` highest versions."""

    num_versions: int = Field(default=1, ge=1)


class AllPolicy(_Strict):
    """Serve every version."""


class SpecificPolicy(_Strict):
    """Serve the listed versions."""

    versions: list[int] = Field(min_length=1)


class VersionPolicy(_Strict):
    """Which version folders are served; exactly one of ``latest``, ``all``, ``specific`` (Triton's)."""

    latest: LatestPolicy | None = None
    all: AllPolicy | None = None
    specific: SpecificPolicy | None = None

    @field_validator("latest", "all", mode="before")
    @classmethod
    def _bare_key_means_defaults(cls, value: object) -> object:
        # `all:` with nothing after it is YAML null; it means "all", as `latest:` means latest 1.
        return {} if value is None else value

    @model_validator(mode="after")
    def _one_policy(self) -> VersionPolicy:
        chosen = [name for name in ("latest", "all", "specific") if getattr(self, name) is not None]
        if len(chosen) > 1:
            raise ValueError(f"give exactly one of latest, all, specific (got {', '.join(chosen)})")
        return self

    def select(self, available: list[int]) -> list[int]:
        """The versions to serve among ``available``, in ascending order."""
        ordered = sorted(available)
        if self.all is not None:
            return ordered
        if self.specific is not None:
            return [version for version in ordered if version in self.specific.versions]
        num_versions = self.latest.num_versions if self.latest is not None else 1
        return ordered[-num_versions:]


class DynamicBatchingConfig(_Strict):
    """Triton's ``dynamic_batching``: merge requests along the batch dim (see :mod:`gateway.runtime.scheduler`)."""

    max_queue_delay_microseconds: int = Field(
        default=0,
        ge=0,
        description="Longest a request waits for others to join its batch while an instance is busy, in us.",
    )
    preferred_batch_size: list[int] = Field(
        default_factory=list,
        description="Batch sizes sent without waiting; the largest one counts. Default: max_batch_size.",
    )
    max_queue_size: int = Field(
        default=0, ge=0, description="Most requests waiting for an instance; more are refused (503). 0: no limit."
    )

    @field_validator("preferred_batch_size")
    @classmethod
    def _positive_sizes(cls, sizes: list[int]) -> list[int]:
        if any(size < 1 for size in sizes):
            raise ValueError(f"preferred_batch_size {sizes}: each size is at least 1")
        return sizes


class RoutingConfig(_Strict):
    """Where a request that names no version goes: a weighted split between version labels.

    A request naming a version or a label gets exactly that one; the others are split by
    ``weights`` (e.g. ``{stable: 90, canary: 10}``). With ``sticky_header`` (a request header, or gRPC
    metadata key, lower case) or ``sticky_parameter`` (a v2 request parameter), requests carrying the
    same value always get the same label while the weights stay the same; requests without it are
    split at random.
    """

    weights: dict[str, float] = Field(
        min_length=1, description="Label -> share of the requests that name no version (any positive scale)."
    )
    sticky_header: str | None = Field(
        default=None, min_length=1, description="Header (gRPC metadata key) whose value keeps a client on one label."
    )
    sticky_parameter: str | None = Field(
        default=None, min_length=1, description="v2 request parameter whose value keeps a client on one label."
    )

    @field_validator("weights")
    @classmethod
    def _positive_weights(cls, weights: dict[str, float]) -> dict[str, float]:
        if any(weight < 0 or not math.isfinite(weight) for weight in weights.values()) or not sum(weights.values()):
            raise ValueError(f"weights {weights}: each weight is >= 0 and at least one is > 0")
        return weights

    @field_validator("sticky_header")
    @classmethod
    def _lower_case_header(cls, header: str | None) -> str | None:
        return header.lower() if header is not None else None


class ShadowConfig(_Strict):
    """A candidate version that receives a copy of a fraction of the requests routed by the policy.

    The client gets the primary's answer only; the copy runs after it, and its answer is compared
    with the primary's (``compare``: ``allclose``, every output within ``atol + rtol * |primary|``;
    ``argmax``, the same argmax along the last axis of every output, for classifiers). At most
    ``max_inflight`` copies run at once; a copy finding them all busy is skipped (counted).
    """

    label: str = Field(min_length=1, description="The version label of the candidate (e.g. canary).")
    fraction: float = Field(default=1.0, gt=0, le=1, description="Share of the routed requests copied, 0 to 1.")
    compare: Literal["allclose", "argmax"] = "allclose"
    atol: float = Field(default=1e-5, ge=0, description="Absolute tolerance of allclose.")
    rtol: float = Field(default=1e-4, ge=0, description="Relative tolerance of allclose.")
    max_inflight: int = Field(default=4, ge=1, description="Most shadow copies running at once.")


class TrafficConfig(_Strict):
    """A model's version labels and the traffic policy over them (``config.yaml`` fields, and the
    management API's ``traffic.json``, see :mod:`gateway.repository.traffic`)."""

    version_labels: dict[str, int] = Field(
        default_factory=dict,
        description="Names for versions, e.g. {stable: 1, canary: 2} (TF Serving's version labels): a request "
        "may name a label where it names a version. Each label must point at a version the policy serves.",
    )
    routing: RoutingConfig | None = Field(
        default=None, description="Weighted split of the requests that name no version between labels."
    )
    shadow: ShadowConfig | None = Field(default=None, description="A candidate label receiving copies of requests.")

    @field_validator("version_labels")
    @classmethod
    def _check_labels(cls, labels: dict[str, int]) -> dict[str, int]:
        for label, version in labels.items():
            if not label or label.isdigit():
                raise ValueError(f"version label {label!r}: a label is a non-empty name, not a version number")
            if version < 0:
                raise ValueError(f"version label {label!r}: version {version} is not a non-negative integer")
        return labels

    @model_validator(mode="after")
    def _known_labels(self) -> TrafficConfig:
        named = [
            *(self.routing.weights if self.routing is not None else ()),
            *([self.shadow.label] if self.shadow else []),
        ]
        unknown = sorted({label for label in named if label not in self.version_labels})
        if unknown:
            known = ", ".join(sorted(self.version_labels)) or "none"
            raise ValueError(f"label {', '.join(unknown)} is not in version_labels (labels: {known})")
        return self


class WarmupInput(_Strict):
    """One input of a configured warmup request (Triton's ``ModelWarmup.Input``): datatype, dims and data.

    Exactly one of ``zero_data``, ``random_data`` and ``input_data_file`` gives the data; the file is
    one item's raw row-major little-endian bytes (BYTES: each element a 4-byte little-endian length
    and its bytes), in the model folder's ``warmup/`` folder, as Triton reads it.
    """

    datatype: Datatype
    dims: list[int] = Field(description="Dims of one item, without the batch dim; each a size >= 0.")
    zero_data: bool = False
    random_data: bool = False
    input_data_file: str | None = Field(default=None, description="A file in the model folder's warmup/ folder.")

    @model_validator(mode="after")
    def _check(self) -> WarmupInput:
        if any(dim < 0 for dim in self.dims):
            raise ValueError(f"dims {self.dims}: a warmup input has fixed sizes (each >= 0)")
        if [self.zero_data, self.random_data, self.input_data_file is not None].count(True) != 1:
            raise ValueError("a warmup input sets exactly one of zero_data, random_data and input_data_file")
        if self.input_data_file is not None and (
            not self.input_data_file or "/" in self.input_data_file or self.input_data_file in (".", "..")
        ):
            raise ValueError(f"input_data_file {self.input_data_file!r} names a file in the warmup/ folder")
        return self


class WarmupRequestConfig(_Strict):
    """A configured warmup request (Triton's ``ModelWarmup``): its inputs, at ``batch_size``, run ``count`` times."""

    name: str = Field(min_length=1)
    batch_size: int = Field(default=1, ge=0, description="Items per request; 0 for a model without a batch dim.")
    count: int = Field(default=1, ge=1, description="How many times the request runs.")
    inputs: dict[str, WarmupInput]


class PipelineStep(_Strict):
    """One step of a pipeline (Triton's ``ensemble_scheduling.step``): a model and its tensor mapping."""

    model_name: str = Field(min_length=1, description="The step's model, another model of the repository.")
    model_version: int = Field(default=-1, ge=-1, description="The version to run; -1: its highest ready version.")
    input_map: dict[str, str] = Field(min_length=1, description="Step model input -> pipeline tensor name.")
    output_map: dict[str, str] = Field(min_length=1, description="Step model output -> pipeline tensor name.")


class PipelineConfig(_Strict):
    """A model made of other models (Triton's ensemble): steps run in process, in dependency order.

    The pipeline's own ``inputs`` and ``outputs`` (which the config must list) are tensors of the
    graph: each step reads pipeline tensors into its model's inputs (``input_map``) and writes its
    model's outputs to pipeline tensors (``output_map``).
    """

    steps: list[PipelineStep] = Field(min_length=1)


class ModelConfig(TrafficConfig):
    """The schema of config.yaml. Fields left out are completed from the artifact at load."""

    backend: Literal["onnxruntime", "torch", "tensorflow"] | None = Field(
        default=None,
        description="Backend serving the model; by default chosen from the artifact in the version folder "
        "(model.onnx: onnxruntime, model.pt2 or model.pt: torch, model.savedmodel/: tensorflow).",
    )
    max_batch_size: int | None = Field(
        default=None,
        ge=0,
        description="Largest batch (first dim) a request may carry; 0: the model has no batch "
        "dimension. By default: the server's default_max_batch_size when every input and output "
        "has a variable first dim, else 0.",
    )
    inputs: list[TensorConfig] = Field(default_factory=list)
    outputs: list[TensorConfig] = Field(default_factory=list)
    version_policy: VersionPolicy = Field(default_factory=VersionPolicy)
    pipeline: PipelineConfig | None = Field(
        default=None,
        description="Steps of other models this model runs (Triton's ensemble_scheduling); needs inputs and outputs.",
    )
    instance_count: int = Field(default=1, ge=1, description="Backend instances running side by side.")
    instance_kind: Literal["auto", "cpu", "gpu"] = Field(
        default="auto",
        description="Where the instances run (Triton's instance_group kind): auto, as the backend's options "
        "choose; cpu or gpu, checked once loaded (a version that runs elsewhere fails to load).",
    )
    default_model_filename: str | None = Field(
        default=None,
        min_length=1,
        description="The artifact's file (or SavedModel folder) name in each version folder, when it is "
        "not the backend's default (model.onnx, model.pt2 / model.pt, model.savedmodel); needs backend.",
    )
    dynamic_batching: DynamicBatchingConfig | None = Field(
        default=None,
        description="Merge requests into batches (needs max_batch_size > 0); `dynamic_batching: {}` or a "
        "bare `dynamic_batching:` turns it on with the defaults.",
    )
    warmup: Literal["auto", "none"] | list[WarmupRequestConfig] = Field(
        default="auto",
        description="Requests run on every instance before the version is ready: auto, the samples in the "
        "version's warmup/*.npz, else a SavedModel's TF Serving warmup file, else zeros generated from the "
        "signature at batch 1 and max_batch_size; none: no warmup; or a list of requests (Triton's model_warmup).",
    )
    onnxruntime: OnnxRuntimeOptions = Field(default_factory=OnnxRuntimeOptions)
    torch: TorchOptions = Field(default_factory=TorchOptions)
    tensorflow: TensorFlowOptions = Field(default_factory=TensorFlowOptions)

    @field_validator("dynamic_batching", mode="before")
    @classmethod
    def _bare_key_turns_on(cls, value: object) -> object:
        return {} if value is None else value

    @model_validator(mode="after")
    def _check_model_filename(self) -> ModelConfig:
        name = self.default_model_filename
        if name is not None:
            if name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
                raise ValueError(f"default_model_filename {name!r} must be a plain file or folder name")
            if self.backend is None:
                raise ValueError("default_model_filename needs the backend named (backend, or Triton's platform)")
        return self

    @model_validator(mode="after")
    def _check_pipeline(self) -> ModelConfig:
        if self.pipeline is None:
            return self
        if not self.inputs or not self.outputs:
            raise ValueError("a pipeline lists its own inputs and outputs (name, datatype, dims)")
        runs_itself = sorted(
            name
            for name in (
                "backend",
                "default_model_filename",
                "dynamic_batching",
                "instance_count",
                "instance_kind",
                "warmup",
            )
            if name in self.model_fields_set
        )
        if runs_itself:
            raise ValueError(f"a pipeline runs no model of its own: leave out {', '.join(runs_itself)}")
        return self

    def backend_options(self, backend_name: str) -> BaseModel:
        """The options section of ``backend_name`` (e.g. the ``onnxruntime:`` section), as ``instance_kind`` has it.

        With ``instance_kind: cpu``, ONNX Runtime runs on the CPU provider unless its section lists
        providers itself, and torch on the CPU unless its ``device`` says otherwise; with ``gpu``,
        torch's ``device: auto`` becomes ``cuda``. (:func:`check_instance_kind` checks the outcome.)
        """
        if backend_name == "onnxruntime":
            if self.instance_kind == "cpu" and "execution_providers" not in self.onnxruntime.model_fields_set:
                return self.onnxruntime.model_copy(update={"execution_providers": ["CPUExecutionProvider"]})
            return self.onnxruntime
        if backend_name == "torch":
            if self.instance_kind != "auto" and self.torch.device == "auto":
                return self.torch.model_copy(update={"device": "cpu" if self.instance_kind == "cpu" else "cuda"})
            return self.torch
        return self.tensorflow

    def declared_signature(self) -> DeclaredSignature:
        """The inputs and outputs the config lists, as the model's full shapes, for artifacts without a signature.

        The batch dim (-1) leads every shape unless ``max_batch_size`` is 0 (a model without one);
        a tensor with ``reshape`` has the reshaped dims (the model's own).
        """
        batch = () if self.max_batch_size == 0 else (-1,)

        def specs(tensors: list[TensorConfig]) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(t.name, V2_TO_NUMPY[t.datatype], (*batch, *t.model_dims)) for t in tensors)

        return DeclaredSignature(inputs=specs(self.inputs), outputs=specs(self.outputs))


def read_model_config(model_path: Path) -> ModelConfig:
    """Read ``<model_path>/config.yaml``; a missing file gives the all-default config.

    Raises:
        ModelConfigError: invalid YAML or schema; the message names each bad field and why.
    """
    config_file = model_path / CONFIG_FILE
    if not config_file.exists():
        return ModelConfig()
    try:
        raw = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ModelConfigError(f"{CONFIG_FILE} is not valid YAML: {error}") from None
    return validate_model_config(raw if raw is not None else {}, CONFIG_FILE)


def validate_model_config(raw: object, source: str) -> ModelConfig:
    """The :class:`ModelConfig` of ``raw`` (config.yaml's data, or a Triton config mapped onto it).

    Args:
        raw: the config's fields as plain data.
        source: where they come from, for the message (e.g. ``config.yaml``).

    Raises:
        ModelConfigError: the schema is broken; the message names each bad field's path and why.
    """
    try:
        return ModelConfig.model_validate(raw)
    except ValidationError as error:
        raise ModelConfigError(f"{source} is invalid: {validation_problems(error)}") from None


def validation_problems(error: ValidationError) -> str:
    """A schema error's problems in one line: each bad field's path and why (``routing.weights: ...``)."""
    return "; ".join(
        f"{'.'.join(str(part) for part in problem['loc']) or '(top level)'}: {problem['msg']}"
        for problem in error.errors()
    )


def merge_config(config: ModelConfig, overrides: ModelConfig, source: str) -> ModelConfig:
    """``config`` (the model's config.yaml) with the fields ``overrides`` sets, from ``source`` (e.g. models.config).

    Raises:
        ModelConfigError: a field is set in both (the message names it and both places).
    """
    both = sorted(overrides.model_fields_set & config.model_fields_set)
    if both:
        raise ModelConfigError(f"{', '.join(both)} set both in {source} and in {CONFIG_FILE}; set it in one place")
    return config.model_copy(update={name: getattr(overrides, name) for name in overrides.model_fields_set})


def complete_config(
    config: ModelConfig, backend_name: str, backend: Backend, default_max_batch_size: int
) -> ModelConfig:
    """Fill in what config.yaml left out from the loaded backend, and check what it gave.

    Args:
        config: the model's config as read.
        backend_name: the backend that loaded the version (a key of ``backends.BACKEND_ARTIFACTS``).
        backend: one loaded instance of the version; its specs are the truth about the artifact.
        default_max_batch_size: max_batch_size for a batchable model whose config gives none.

    Returns:
        A config whose ``backend``, ``max_batch_size``, ``inputs`` and ``outputs`` are all set;
        ``outputs`` keeps only the outputs config.yaml listed, when it listed any.

    Raises:
        ModelConfigError: config.yaml disagrees with the artifact (unknown or missing tensor names,
            datatypes, dims, or a batch dimension the model does not have), or asks for dynamic
            batching without a batch dimension or with preferred sizes over max_batch_size.
    """
    batchable = all(spec.shape[:1] == (-1,) for spec in [*backend.inputs, *backend.outputs])
    max_batch_size = config.max_batch_size
    if max_batch_size is None:
        max_batch_size = default_max_batch_size if batchable else 0
    elif max_batch_size > 0 and not batchable:
        fixed = next(spec for spec in [*backend.inputs, *backend.outputs] if spec.shape[:1] != (-1,))
        raise ModelConfigError(
            f"max_batch_size {max_batch_size} needs a variable first dim on every input and output, "
            f"but '{fixed.name}' has shape {list(fixed.shape)}; set max_batch_size: 0"
        )
    batching = config.dynamic_batching
    if batching is not None:
        if max_batch_size == 0:
            raise ModelConfigError("dynamic_batching needs a batch dimension (max_batch_size > 0)")
        too_large = [size for size in batching.preferred_batch_size if size > max_batch_size]
        if too_large:
            raise ModelConfigError(
                f"dynamic_batching.preferred_batch_size {too_large} exceeds max_batch_size {max_batch_size}"
            )
    inputs = _complete_tensors("inputs", config.inputs, backend.inputs, max_batch_size, require_all=True)
    outputs = _complete_tensors("outputs", config.outputs, backend.outputs, max_batch_size, require_all=False)
    return config.model_copy(
        update={
            "backend": backend_name,
            "max_batch_size": max_batch_size,
            "inputs": inputs,
            "outputs": outputs,
        }
    )


def full_shape(tensor: TensorConfig, max_batch_size: int) -> list[int]:
    """The tensor's shape as clients see it: ``[-1, *dims]`` for a batching model, else ``dims``."""
    return [-1, *tensor.dims] if max_batch_size > 0 else list(tensor.dims)


def _complete_tensors(
    field: str,
    configured: list[TensorConfig],
    specs: list[TensorSpec],
    max_batch_size: int,
    *,
    require_all: bool,
) -> list[TensorConfig]:
    by_name = {spec.name: spec for spec in specs}
    names = [tensor.name for tensor in configured]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ModelConfigError(f"{field}: {', '.join(repeated)} listed more than once")
    if not configured:
        return [
            TensorConfig(
                name=spec.name,
                datatype=v2_datatype(spec.dtype),  # type: ignore[arg-type]
                dims=list(spec.shape[1:] if max_batch_size > 0 else spec.shape),
            )
            for spec in specs
        ]
    unknown = [tensor.name for tensor in configured if tensor.name not in by_name]
    if unknown:
        raise ModelConfigError(f"{field}: {', '.join(unknown)} not in the model, which has {', '.join(by_name)}")
    missing = [name for name in by_name if name not in {tensor.name for tensor in configured}]
    if require_all and missing:
        raise ModelConfigError(f"{field}: the model also needs {', '.join(missing)}; list every input")
    for tensor in configured:
        spec = by_name[tensor.name]
        if V2_TO_NUMPY[tensor.datatype] != spec.dtype:
            raise ModelConfigError(
                f"{field}.{tensor.name}: datatype {tensor.datatype} but the model has {v2_datatype(spec.dtype)}"
            )
        model_dims = spec.shape[1:] if max_batch_size > 0 else spec.shape
        dims = tensor.model_dims
        compatible = len(dims) == len(model_dims) and all(
            model_dim in (-1, dim) for dim, model_dim in zip(dims, model_dims, strict=True)
        )
        if not compatible:
            what = "dims" if tensor.reshape is None else "reshape"
            raise ModelConfigError(
                f"{field}.{tensor.name}: {what} {dims} do not fit the model's {list(model_dims)}"
                + (" (batch dim excluded)" if max_batch_size > 0 else "")
            )
    return list(configured)


def triton_model_config(
    config: ModelConfig, name: str, platform: str, backend_parameters: Mapping[str, Any]
) -> dict[str, Any]:
    """A completed config as Triton's ``ModelConfig`` in JSON (the model configuration extension).

    The shape is that of ``model_config.proto``'s ``ModelConfig`` as Triton's
    ``GET v2/models/{m}[/versions/{v}]/config`` answers it: ``name``, ``platform``, ``backend``,
    ``version_policy``, ``max_batch_size``, ``input`` and ``output`` (``data_type`` as ``TYPE_FP32``...,
    BYTES as ``TYPE_STRING``; ``dims`` without the batch dim, -1 for a variable size),
    ``instance_group`` (``count``, ``kind`` ``KIND_GPU`` when the backend runs on a GPU, else
    ``KIND_CPU``) and, when on, ``dynamic_batching`` (``preferred_batch_size``,
    ``max_queue_delay_microseconds``, ``default_queue_policy.max_queue_size``); a pipeline has
    ``ensemble_scheduling`` (its steps) in place of ``instance_group``. The one rendering
    of it: the REST route answers it, a gRPC ``ModelConfig`` RPC can parse it into the message.

    Args:
        config: the completed config of a loaded version (see :func:`complete_config`).
        name: the model name.
        platform: Triton's platform name (``onnxruntime_onnx``...).
        backend_parameters: how the backend runs the version (its metadata parameters:
            ``execution_providers`` or ``device`` tell a GPU).
    """
    on_gpu = runs_on_gpu(backend_parameters)
    policy = config.version_policy.model_dump(exclude_none=True) or {"latest": {"num_versions": 1}}
    answer: dict[str, Any] = {
        "name": name,
        "platform": platform,
        "backend": config.backend or "",
        "version_policy": policy,
        "max_batch_size": config.max_batch_size or 0,
        "input": [_triton_tensor(tensor) for tensor in config.inputs],
        "output": [_triton_tensor(tensor) for tensor in config.outputs],
        "instance_group": [
            {"name": name, "kind": "KIND_GPU" if on_gpu else "KIND_CPU", "count": config.instance_count}
        ],
    }
    if config.default_model_filename is not None:
        answer["default_model_filename"] = config.default_model_filename
    if config.pipeline is not None:  # an ensemble: no instances of its own
        del answer["instance_group"]
        answer["ensemble_scheduling"] = {"step": [step.model_dump() for step in config.pipeline.steps]}
    batching = config.dynamic_batching
    if batching is not None:
        answer["dynamic_batching"] = {
            "preferred_batch_size": list(batching.preferred_batch_size),
            "max_queue_delay_microseconds": batching.max_queue_delay_microseconds,
            "default_queue_policy": {"max_queue_size": batching.max_queue_size},
        }
    return answer


def _triton_tensor(tensor: TensorConfig) -> dict[str, Any]:
    """Triton's ``ModelInput`` / ``ModelOutput`` in JSON: name, ``TYPE_*`` data type, dims, reshape."""
    data_type = "TYPE_STRING" if tensor.datatype == "BYTES" else f"TYPE_{tensor.datatype}"
    answer: dict[str, Any] = {"name": tensor.name, "data_type": data_type, "dims": list(tensor.dims)}
    if tensor.reshape is not None:
        answer["reshape"] = {"shape": list(tensor.reshape)}
    return answer


def runs_on_gpu(backend_parameters: Mapping[str, Any]) -> bool:
    """Whether a loaded version runs on a GPU, from its backend's metadata parameters.

    ONNX Runtime runs on a GPU when its first execution provider is not the CPU's (nor OpenVINO's,
    which this build runs on the CPU); torch when its ``device`` is CUDA. TensorFlow reports no
    device: the gateway's tensorflow backend is counted as running on the CPU.
    """
    providers = list(backend_parameters.get("execution_providers") or [])
    if providers and providers[0] not in ("CPUExecutionProvider", "OpenVINOExecutionProvider"):
        return True
    return str(backend_parameters.get("device", "")).startswith("cuda")


def check_instance_kind(config: ModelConfig, backend_parameters: Mapping[str, Any]) -> None:
    """Check that a loaded version runs where its ``instance_kind`` (Triton's instance_group kind) asks.

    Raises:
        ModelConfigError: ``gpu`` but the version runs on the CPU here (no GPU, or a runtime without
            GPU support), or ``cpu`` but it runs on a GPU; the message says how it runs.
    """
    if config.instance_kind == "auto" or runs_on_gpu(backend_parameters) == (config.instance_kind == "gpu"):
        return
    where = "the CPU" if config.instance_kind == "gpu" else "a GPU"
    how = ", ".join(f"{key} {value}" for key, value in backend_parameters.items()) or "no device reported"
    hint = (
        " (a GPU needs onnxruntime-gpu or a CUDA build of PyTorch, and a GPU; the tensorflow backend runs on the CPU)"
        if config.instance_kind == "gpu"
        else ""
    )
    raise ModelConfigError(
        f"instance_kind {config.instance_kind} (Triton's instance_group kind KIND_{config.instance_kind.upper()}), "
        f"but the model runs on {where} here ({how}){hint}"
    )
