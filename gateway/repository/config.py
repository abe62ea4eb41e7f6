"""A model's ``config.yaml``: validation, version policy, and completion from the artifact.

``config.yaml`` sits in the model folder, beside the integer version folders, and applies to every
version. All of it is optional: without it, or without ``inputs``/``outputs``, the config is completed
from what the backend reads in the artifact (names, datatypes, shapes and the batch dimension), as
Triton does without a strict config. Field meanings follow Triton's model configuration:
``max_batch_size > 0`` means the first dimension of every input and output is the batch, left out of
``dims`` and shown as -1 in metadata; ``0`` means the model takes no batch dimension.
"""

from __future__ import annotations

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
    """One input or output: name, v2 datatype and dims (without the batch dim; -1: variable)."""

    name: str = Field(min_length=1)
    datatype: Datatype
    dims: list[int] = Field(description="Dims without the batch dimension; -1 for a variable size.")

    @model_validator(mode="after")
    def _check_dims(self) -> TensorConfig:
        if any(dim < -1 for dim in self.dims):
            raise ValueError(f"dims {self.dims}: each dim is -1 (variable) or a size >= 0")
        return self


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


class ModelConfig(_Strict):
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
    version_labels: dict[str, int] = Field(
        default_factory=dict,
        description="Names for versions, e.g. {stable: 1, canary: 2} (TF Serving's version labels): a request "
        "may name a label where it names a version. Each label must point at a version the policy serves.",
    )
    instance_count: int = Field(default=1, ge=1, description="Backend instances running side by side.")
    dynamic_batching: DynamicBatchingConfig | None = Field(
        default=None,
        description="Merge requests into batches (needs max_batch_size > 0); `dynamic_batching: {}` or a "
        "bare `dynamic_batching:` turns it on with the defaults.",
    )
    onnxruntime: OnnxRuntimeOptions = Field(default_factory=OnnxRuntimeOptions)
    torch: TorchOptions = Field(default_factory=TorchOptions)
    tensorflow: TensorFlowOptions = Field(default_factory=TensorFlowOptions)

    @field_validator("version_labels")
    @classmethod
    def _check_labels(cls, labels: dict[str, int]) -> dict[str, int]:
        for label, version in labels.items():
            if not label or label.isdigit():
                raise ValueError(f"version label {label!r}: a label is a non-empty name, not a version number")
            if version < 0:
                raise ValueError(f"version label {label!r}: version {version} is not a non-negative integer")
        return labels

    @field_validator("dynamic_batching", mode="before")
    @classmethod
    def _bare_key_turns_on(cls, value: object) -> object:
        return {} if value is None else value

    def backend_options(self, backend_name: str) -> BaseModel:
        """The options section of ``backend_name`` (e.g. the ``onnxruntime:`` section)."""
        sections: dict[str, BaseModel] = {
            "onnxruntime": self.onnxruntime,
            "torch": self.torch,
            "tensorflow": self.tensorflow,
        }
        return sections[backend_name]

    def declared_signature(self) -> DeclaredSignature:
        """The inputs and outputs config.yaml lists, as full shapes, for artifacts without a signature.

        The batch dim (-1) leads every shape unless ``max_batch_size`` is 0 (a model without one).
        """
        batch = () if self.max_batch_size == 0 else (-1,)

        def specs(tensors: list[TensorConfig]) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(t.name, V2_TO_NUMPY[t.datatype], (*batch, *t.dims)) for t in tensors)

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
    try:
        return ModelConfig.model_validate(raw if raw is not None else {})
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in problem['loc']) or '(top level)'}: {problem['msg']}"
            for problem in error.errors()
        )
        raise ModelConfigError(f"{CONFIG_FILE} is invalid: {problems}") from None


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
        compatible = len(tensor.dims) == len(model_dims) and all(
            model_dim in (-1, dim) for dim, model_dim in zip(tensor.dims, model_dims, strict=True)
        )
        if not compatible:
            raise ModelConfigError(
                f"{field}.{tensor.name}: dims {tensor.dims} do not fit the model's {list(model_dims)}"
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
    ``max_queue_delay_microseconds``, ``default_queue_policy.max_queue_size``). The one rendering
    of it: the REST route answers it, a gRPC ``ModelConfig`` RPC can parse it into the message.

    Args:
        config: the completed config of a loaded version (see :func:`complete_config`).
        name: the model name.
        platform: Triton's platform name (``onnxruntime_onnx``...).
        backend_parameters: how the backend runs the version (its metadata parameters:
            ``execution_providers`` or ``device`` tell a GPU).
    """
    providers = list(backend_parameters.get("execution_providers") or [])
    on_gpu = bool(providers) and providers[0] != "CPUExecutionProvider"
    on_gpu = on_gpu or str(backend_parameters.get("device", "")).startswith("cuda")
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
    batching = config.dynamic_batching
    if batching is not None:
        answer["dynamic_batching"] = {
            "preferred_batch_size": list(batching.preferred_batch_size),
            "max_queue_delay_microseconds": batching.max_queue_delay_microseconds,
            "default_queue_policy": {"max_queue_size": batching.max_queue_size},
        }
    return answer


def _triton_tensor(tensor: TensorConfig) -> dict[str, Any]:
    """Triton's ``ModelInput`` / ``ModelOutput`` in JSON: name, ``TYPE_*`` data type, dims."""
    data_type = "TYPE_STRING" if tensor.datatype == "BYTES" else f"TYPE_{tensor.datatype}"
    return {"name": tensor.name, "data_type": data_type, "dims": list(tensor.dims)}
