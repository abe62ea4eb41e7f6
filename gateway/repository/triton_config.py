"""Triton's ``config.pbtxt``, read as it is and mapped onto the gateway's model config.

A model folder of a Triton model repository holds ``config.pbtxt``: Triton's ``ModelConfig``
(``model_config.proto``) in protobuf text format. It is parsed with protobuf's ``text_format`` into
our own ``inference.ModelConfig`` (:mod:`protos.model_config`, which declares only the fields the
gateway honours), then mapped field by field:

- ``name`` (must be the folder's), ``platform`` / ``backend``: ``onnxruntime_onnx`` / ``onnxruntime``,
  ``pytorch_libtorch`` / ``pytorch`` (TorchScript ``model.pt``), ``tensorflow_savedmodel`` /
  ``tensorflow``; ``default_model_filename``;
- ``max_batch_size``; ``input`` / ``output``: ``name``, ``data_type`` (``TYPE_FP32``...; ``TYPE_STRING``
  is BYTES), ``dims``, ``reshape``, an input's ``format`` (informational, checked as Triton does);
- ``platform: "ensemble"`` with ``ensemble_scheduling``: each ``step``'s ``model_name``,
  ``model_version`` (-1: the highest ready version), ``input_map`` and ``output_map``, as the
  gateway's ``pipeline`` (:mod:`gateway.repository.pipelines`);
- ``dynamic_batching``: ``preferred_batch_size``, ``max_queue_delay_microseconds``,
  ``default_queue_policy.max_queue_size``; ``instance_group``: ``count``, ``kind`` (``KIND_AUTO``,
  ``KIND_CPU``, ``KIND_GPU``, checked once loaded), ``gpus: [0]``; ``version_policy``;
- ONNX Runtime's ``optimization.graph.level`` and ``optimization.execution_accelerators``
  (``tensorrt`` and ``cuda`` on GPUs, ``openvino`` on CPUs, their ``parameters`` as provider options,
  with the keys of Triton's onnxruntime backend), and ``parameters`` each backend takes (listed in
  :data:`BACKEND_PARAMETERS`);
- ``model_warmup``: each request's ``name``, ``batch_size``, ``count`` and ``inputs`` (``data_type``,
  ``dims``, ``zero_data`` / ``random_data`` / ``input_data_file``), as the gateway's ``warmup`` list
  (:mod:`gateway.repository.warmup_config`).

A field the gateway cannot honour is a load error naming the field, never ignored: a field our
``.proto`` does not declare fails to parse (the message names it, with its line and the reason where
one is known, see :data:`UNSUPPORTED_FIELDS`), a value it cannot honour fails the mapping. The same
mapping reads the JSON ``config`` of a load request (Triton's config override).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from gateway.repository.config import ModelConfig, ModelConfigError, validate_model_config
from protos.messages import ProtoMessage
from protos.model_config import ModelConfig as TritonModelConfig

#: The file of a Triton model configuration in a model folder.
CONFIG_PBTXT = "config.pbtxt"

#: Triton's platform names -> the gateway's backends.
PLATFORMS = {"onnxruntime_onnx": "onnxruntime", "pytorch_libtorch": "torch", "tensorflow_savedmodel": "tensorflow"}
#: Triton's platform of an ensemble, served as a pipeline.
ENSEMBLE_PLATFORM = "ensemble"
#: Triton's backend names -> the gateway's backends.
TRITON_BACKENDS = {"onnxruntime": "onnxruntime", "pytorch": "torch", "tensorflow": "tensorflow"}

#: Why a field of Triton's ModelConfig that our .proto does not declare is refused, by its path.
UNSUPPORTED_FIELDS = {
    "sequence_batching": "stateful (sequence) models are not served: the gateway keeps no state between requests",
    "response_cache": "the gateway has no response cache",
    "model_transaction_policy": "decoupled models (several responses per request) are not served",
    "batch_input": "ragged batching is not supported",
    "batch_output": "ragged batching is not supported",
    "runtime": "backend runtimes (e.g. a Python model.py) are not run: no code from a repository runs",
    "model_operations": "custom operation libraries are native code, which the gateway does not load",
    "model_repository_agents": "repository agents are not supported",
    "cc_model_filenames": "per-GPU model files are not supported",
    "metric_tags": "custom metric tags are not supported",
    "model_metrics": "custom metric settings are not supported",
    "optimization.cuda": "CUDA graphs and CUDA stream settings are not supported",
    "optimization.priority": "model priorities are not supported",
    "optimization.input_pinned_memory": "the gateway does not manage pinned memory buffers",
    "optimization.output_pinned_memory": "the gateway does not manage pinned memory buffers",
    "optimization.gather_kernel_buffer_threshold": "the gateway does not gather GPU buffers",
    "optimization.eager_batching": "eager batching is not supported",
    "dynamic_batching.preserve_ordering": "answers go back as each batch finishes",
    "dynamic_batching.priority_levels": "request priorities are not supported",
    "dynamic_batching.default_priority_level": "request priorities are not supported",
    "dynamic_batching.priority_queue_policy": "request priorities are not supported",
    "dynamic_batching.default_queue_policy.timeout_action": "queue timeouts are set by the request's timeout "
    "parameter or --request-timeout-seconds",
    "dynamic_batching.default_queue_policy.default_timeout_microseconds": "queue timeouts are set by the "
    "request's timeout parameter or --request-timeout-seconds",
    "dynamic_batching.default_queue_policy.allow_timeout_override": "the request's timeout parameter always applies",
    "input.is_shape_tensor": "shape tensors (TensorRT) are not supported",
    "output.is_shape_tensor": "shape tensors (TensorRT) are not supported",
    "input.optional": "optional inputs are not supported: every input must be sent",
    "input.allow_ragged_batch": "ragged batching is not supported",
    "input.is_non_linear_format_io": "non-linear formats (TensorRT) are not supported",
    "output.is_non_linear_format_io": "non-linear formats (TensorRT) are not supported",
    "output.label_filename": "the classification extension is not supported",
    "instance_group.rate_limiter": "the rate limiter is not supported",
    "instance_group.secondary_devices": "secondary devices are not supported",
    "instance_group.profile": "TensorRT profiles are not supported",
    "instance_group.passive": "passive instances are not supported",
    "instance_group.host_policy": "host policies are not supported",
}

#: The ``parameters`` each backend takes (Triton's keys), with what they set.
BACKEND_PARAMETERS = {
    "onnxruntime": {
        "intra_op_thread_count": "onnxruntime.intra_op_threads",
        "inter_op_thread_count": "onnxruntime.inter_op_threads",
        "execution_mode": "0 only (sequential, ONNX Runtime's default)",
    },
    "torch": {
        "INTRA_OP_THREAD_COUNT": "torch.threads",
        "INFERENCE_MODE": "true only (models always run under torch.inference_mode)",
    },
    "tensorflow": {
        "TF_SIGNATURE_DEF": "tensorflow.signature_name",
        "TF_GRAPH_TAG": "serve only (the SavedModel's serving graph)",
    },
}

#: ONNX Runtime's thread parameters -> the onnxruntime options they set.
THREAD_PARAMETERS = {"intra_op_thread_count": "intra_op_threads", "inter_op_thread_count": "inter_op_threads"}

#: ONNX Runtime's graph optimization level for Triton's ``optimization.graph.level`` (onnxruntime backend:
#: -1 basic, 1 basic and extended, 2 none, 0 or unset all).
GRAPH_LEVELS = {0: "all", -1: "basic", 1: "extended", 2: "disable"}

#: Execution accelerators (Triton's names) -> ONNX Runtime providers, for GPU and for CPU instances.
GPU_ACCELERATORS = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider"}
CPU_ACCELERATORS = {"openvino": "OpenVINOExecutionProvider"}

#: The TensorRT accelerator's parameters (Triton's onnxruntime backend) -> TensorRT provider options; keys
#: starting with ``trt_`` are passed as they are, ``precision_mode`` is handled on its own.
TENSORRT_PARAMETERS = {
    "max_workspace_size_bytes": "trt_max_workspace_size",
    "int8_calibration_table_name": "trt_int8_calibration_table_name",
    "int8_use_native_calibration_table": "trt_int8_use_native_calibration_table",
}

_INSTANCE_KINDS = {"KIND_AUTO": "auto", "KIND_CPU": "cpu", "KIND_GPU": "gpu"}
_PARSE_PROBLEM = re.compile(
    r'(?:(?P<line>\d+):(?P<column>\d+) : )?.*?(?:Message type "(?P<type>[\w.]+)" has no field named "(?P<field>\w+)")'
)


def read_triton_config(model_path: Path) -> ModelConfig:
    """Read ``<model_path>/config.pbtxt`` (Triton's model configuration) as the gateway's config.

    Raises:
        ModelConfigError: the file is not UTF-8 text format of Triton's ModelConfig, sets a field the
            gateway cannot honour (the message names it, with its line when it is one our proto does
            not declare), or a value the gateway's config refuses.
    """
    try:
        text = (model_path / CONFIG_PBTXT).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ModelConfigError(f"{CONFIG_PBTXT} is not UTF-8 text: {error}") from None
    message = TritonModelConfig()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as error:
        raise ModelConfigError(_parse_problem(CONFIG_PBTXT, str(error))) from None
    return triton_to_gateway_config(message, model_path.name, CONFIG_PBTXT)


def parse_config_override(text: str, model_name: str) -> ModelConfig:
    """A load request's config override: Triton's ModelConfig as JSON, as the gateway's config.

    Triton's model control examples send it as the ``config`` parameter of a load request; it
    replaces the model's ``config.pbtxt`` or ``config.yaml`` for that load.

    Raises:
        ModelConfigError: not JSON of Triton's ModelConfig, or a field or value the gateway cannot
            honour (as :func:`read_triton_config`).
    """
    message = TritonModelConfig()
    try:
        json_format.Parse(text, message)
    except json_format.ParseError as error:
        raise ModelConfigError(_parse_problem("the config override", str(error).splitlines()[0])) from None
    return triton_to_gateway_config(message, model_name, "the config override")


def triton_to_gateway_config(message: ProtoMessage, model_name: str, source: str) -> ModelConfig:
    """Map a parsed ``inference.ModelConfig`` onto the gateway's :class:`ModelConfig`.

    Args:
        message: Triton's ModelConfig as parsed.
        model_name: the model's name (its folder's).
        source: where the message comes from, for messages (``config.pbtxt``).

    Raises:
        ModelConfigError: a value the gateway cannot honour; the message names the field.
    """

    def fail(problem: str) -> ModelConfigError:
        return ModelConfigError(f"{source}: {problem}")

    if message.name and message.name != model_name:
        raise fail(f"name '{message.name}' is not the model folder's name '{model_name}'")
    if message.platform == ENSEMBLE_PLATFORM or message.HasField("ensemble_scheduling"):
        return _pipeline_config(message, fail, source)
    backend = _backend(message, fail)
    raw: dict[str, Any] = {
        "inputs": [_tensor(tensor, f"input[{index}]", fail) for index, tensor in enumerate(message.input)],
        "outputs": [_tensor(tensor, f"output[{index}]", fail) for index, tensor in enumerate(message.output)],
        "version_policy": _version_policy(message),
    }
    if backend is not None:
        raw["backend"] = backend
    if message.max_batch_size or message.input or message.output:
        raw["max_batch_size"] = message.max_batch_size
    if message.default_model_filename:
        raw["default_model_filename"] = message.default_model_filename
    if message.HasField("dynamic_batching"):
        batching = message.dynamic_batching
        raw["dynamic_batching"] = {
            "preferred_batch_size": list(batching.preferred_batch_size),
            "max_queue_delay_microseconds": batching.max_queue_delay_microseconds,
            "max_queue_size": batching.default_queue_policy.max_queue_size,
        }
    if message.model_warmup:
        raw["warmup"] = [
            _warmup_request(warmup, f"model_warmup[{index}]", fail) for index, warmup in enumerate(message.model_warmup)
        ]
    raw["instance_count"], raw["instance_kind"] = _instance_groups(message, fail)
    if backend is not None:
        raw.update(_backend_options(message, backend, raw["instance_kind"], fail))
    elif message.parameters or message.HasField("optimization"):
        raise fail("parameters and optimization need the platform or backend named")
    return validate_model_config(raw, source)


def _pipeline_config(message: ProtoMessage, fail: Callable[[str], ModelConfigError], source: str) -> ModelConfig:
    """An ensemble (``platform: "ensemble"``, ``ensemble_scheduling``) as the gateway's pipeline config."""
    if message.platform != ENSEMBLE_PLATFORM or not message.HasField("ensemble_scheduling"):
        raise fail('an ensemble needs both platform "ensemble" and ensemble_scheduling')
    set_fields = [
        name
        for name in ("backend", "default_model_filename", "instance_group", "optimization", "parameters")
        if (message.HasField(name) if name == "optimization" else bool(getattr(message, name)))
    ]
    if set_fields:
        raise fail(f"an ensemble runs no model of its own: leave out {', '.join(set_fields)}")
    raw: dict[str, Any] = {
        "inputs": [_tensor(tensor, f"input[{index}]", fail) for index, tensor in enumerate(message.input)],
        "outputs": [_tensor(tensor, f"output[{index}]", fail) for index, tensor in enumerate(message.output)],
        "max_batch_size": message.max_batch_size,
        "version_policy": _version_policy(message),
        "pipeline": {
            "steps": [
                {
                    "model_name": step.model_name,
                    "model_version": step.model_version,
                    "input_map": dict(step.input_map),
                    "output_map": dict(step.output_map),
                }
                for step in message.ensemble_scheduling.step
            ]
        },
    }
    for index, step in enumerate(message.ensemble_scheduling.step):
        if step.model_namespace:
            raise fail(f"ensemble_scheduling.step[{index}].model_namespace is not supported")
    return validate_model_config(raw, source)


def _backend(message: ProtoMessage, fail: Callable[[str], ModelConfigError]) -> str | None:
    """The gateway backend the platform and backend name (None: neither; chosen from the artifact)."""
    chosen: set[str] = set()
    if message.platform:
        if message.platform not in PLATFORMS:
            raise fail(f"platform '{message.platform}' is not served (the gateway serves {', '.join(PLATFORMS)})")
        chosen.add(PLATFORMS[message.platform])
    if message.backend:
        if message.backend not in TRITON_BACKENDS:
            why = " (its model.py would run code from the repository)" if message.backend == "python" else ""
            raise fail(
                f"backend '{message.backend}' is not served{why} (the gateway serves {', '.join(TRITON_BACKENDS)})"
            )
        chosen.add(TRITON_BACKENDS[message.backend])
    if len(chosen) > 1:
        raise fail(f"platform '{message.platform}' and backend '{message.backend}' name different backends")
    return chosen.pop() if chosen else None


def _tensor(tensor: ProtoMessage, where: str, fail: Callable[[str], ModelConfigError]) -> dict[str, Any]:
    """An input or output as the gateway's TensorConfig fields."""
    data_type = _enum_name(tensor, "data_type")
    if data_type in ("TYPE_INVALID", "TYPE_BF16"):
        problem = "is missing" if data_type == "TYPE_INVALID" else "TYPE_BF16 has no v2 datatype the gateway serves"
        raise fail(f"{where} '{tensor.name}': data_type {problem}")
    dims = [int(dim) for dim in tensor.dims]
    fields: dict[str, Any] = {
        "name": tensor.name,
        "datatype": "BYTES" if data_type == "TYPE_STRING" else data_type.removeprefix("TYPE_"),
        "dims": dims,
    }
    if tensor.HasField("reshape"):
        fields["reshape"] = [int(dim) for dim in tensor.reshape.shape]
    if "format" in tensor.DESCRIPTOR.fields_by_name:
        layout = _enum_name(tensor, "format")
        if layout != "FORMAT_NONE" and len(dims) != 3:
            raise fail(f"{where} '{tensor.name}': format {layout} needs 3 dims (without the batch dim), got {dims}")
    return fields


def _warmup_request(warmup: ProtoMessage, where: str, fail: Callable[[str], ModelConfigError]) -> dict[str, Any]:
    """A ``model_warmup`` entry as a request of the gateway's ``warmup`` list (``config.WarmupRequestConfig``)."""
    inputs: dict[str, Any] = {}
    for name, data in warmup.inputs.items():
        data_type = _enum_name(data, "data_type")
        if data_type in ("TYPE_INVALID", "TYPE_BF16"):
            problem = "is missing" if data_type == "TYPE_INVALID" else "TYPE_BF16 has no v2 datatype the gateway serves"
            raise fail(f"{where} input '{name}': data_type {problem}")
        choice = data.WhichOneof("input_data_type")
        if choice is None:
            raise fail(f"{where} input '{name}': give zero_data, random_data or input_data_file")
        inputs[name] = {
            "datatype": "BYTES" if data_type == "TYPE_STRING" else data_type.removeprefix("TYPE_"),
            "dims": [int(dim) for dim in data.dims],
            choice: getattr(data, choice) if choice == "input_data_file" else True,
        }
    return {"name": warmup.name or where, "batch_size": warmup.batch_size, "count": warmup.count or 1, "inputs": inputs}


def _version_policy(message: ProtoMessage) -> dict[str, Any]:
    policy = message.version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "latest":
        return {"latest": {"num_versions": policy.latest.num_versions}}
    if choice == "all":
        return {"all": {}}
    if choice == "specific":
        return {"specific": {"versions": [int(version) for version in policy.specific.versions]}}
    return {}


def _instance_groups(message: ProtoMessage, fail: Callable[[str], ModelConfigError]) -> tuple[int, str]:
    """``instance_count`` and ``instance_kind`` from the instance groups (all of one kind; counts add up)."""
    count = 0
    kinds: set[str] = set()
    for index, group in enumerate(message.instance_group):
        kind = _enum_name(group, "kind")
        if kind not in _INSTANCE_KINDS:
            raise fail(f"instance_group[{index}].kind {kind} is not supported (KIND_AUTO, KIND_CPU or KIND_GPU)")
        gpus = list(group.gpus)
        if gpus and (gpus != [0] or kind == "KIND_CPU"):
            raise fail(
                f"instance_group[{index}].gpus {gpus}: instances run on the default device (GPU 0); "
                "leave gpus out, or give [0] with KIND_GPU"
            )
        if group.count < 0:
            raise fail(f"instance_group[{index}].count {group.count} is negative")
        count += group.count or 1
        kinds.add(_INSTANCE_KINDS[kind])
    if len(kinds) > 1:
        raise fail(f"instance groups of several kinds ({', '.join(sorted(kinds))}): give one kind")
    return count or 1, kinds.pop() if kinds else "auto"


def _backend_options(
    message: ProtoMessage, backend: str, instance_kind: str, fail: Callable[[str], ModelConfigError]
) -> dict[str, Any]:
    """The backend's options section from ``parameters`` and ``optimization``."""
    parameters = {key: value.string_value for key, value in message.parameters.items()}
    accepted = BACKEND_PARAMETERS[backend]
    unknown = sorted(key for key in parameters if key not in accepted)
    if unknown:
        raise fail(
            f"parameters {', '.join(unknown)} not supported by the {backend} backend "
            f"(it takes: {', '.join(f'{key} ({meaning})' for key, meaning in accepted.items())})"
        )
    optimization = message.optimization
    if backend != "onnxruntime" and message.HasField("optimization"):
        raise fail("optimization (graph level, execution accelerators) applies to onnxruntime models only")
    section: dict[str, Any] = {}
    if backend == "onnxruntime":
        for key, option in THREAD_PARAMETERS.items():
            if key in parameters:
                section[option] = _count_parameter(key, parameters[key], fail)
        if parameters.get("execution_mode", "0") != "0":
            raise fail(f"parameters execution_mode '{parameters['execution_mode']}': only 0 (sequential) is supported")
        level = optimization.graph.level
        if level not in GRAPH_LEVELS:
            raise fail(f"optimization.graph.level {level} is not one of -1, 0, 1, 2")
        if level:
            section["graph_optimization_level"] = GRAPH_LEVELS[level]
        section.update(_accelerators(optimization.execution_accelerators, instance_kind, fail))
    elif backend == "torch":
        if "INTRA_OP_THREAD_COUNT" in parameters:
            section["threads"] = _count_parameter("INTRA_OP_THREAD_COUNT", parameters["INTRA_OP_THREAD_COUNT"], fail)
        if parameters.get("INFERENCE_MODE", "true").lower() != "true":
            raise fail("parameters INFERENCE_MODE: only true is supported (models run under torch.inference_mode)")
    else:
        if "TF_SIGNATURE_DEF" in parameters:
            section["signature_name"] = parameters["TF_SIGNATURE_DEF"]
        if parameters.get("TF_GRAPH_TAG", "serve") != "serve":
            raise fail(f"parameters TF_GRAPH_TAG '{parameters['TF_GRAPH_TAG']}': only serve is supported")
    return {backend: section} if section else {}


def _accelerators(
    accelerators: ProtoMessage, instance_kind: str, fail: Callable[[str], ModelConfigError]
) -> dict[str, Any]:
    """ONNX Runtime's execution providers and their options from the execution accelerators.

    In order: the GPU accelerators, CUDA, the CPU accelerators, the CPU. GPU accelerators are left
    out for ``KIND_CPU`` instances (Triton applies them to GPU instances only).
    """
    chosen: dict[str, list[tuple[str, dict[str, str]]]] = {"gpu": [], "cpu": []}
    for kind, known, listed in (
        ("gpu", GPU_ACCELERATORS, accelerators.gpu_execution_accelerator),
        ("cpu", CPU_ACCELERATORS, accelerators.cpu_execution_accelerator),
    ):
        for index, accelerator in enumerate(listed):
            where = f"optimization.execution_accelerators.{kind}_execution_accelerator[{index}]"
            provider = known.get(accelerator.name)
            if provider is None:
                raise fail(f"{where}.name '{accelerator.name}' is not supported ({', '.join(known)})")
            options = dict(accelerator.parameters)
            if provider == "TensorrtExecutionProvider":
                options = _tensorrt_options(options, where, fail)
            chosen[kind].append((provider, options))
    if not chosen["gpu"] and not chosen["cpu"]:
        return {}
    gpu = [] if instance_kind == "cpu" else chosen["gpu"]
    if gpu and all(provider != "CUDAExecutionProvider" for provider, _ in gpu):
        gpu.append(("CUDAExecutionProvider", {}))
    providers = [*gpu, *chosen["cpu"], ("CPUExecutionProvider", {})]
    return {
        "execution_providers": [provider for provider, _ in providers],
        "provider_options": {provider: options for provider, options in providers if options},
    }


def _tensorrt_options(
    parameters: dict[str, str], where: str, fail: Callable[[str], ModelConfigError]
) -> dict[str, str]:
    """The TensorRT provider's options for the TensorRT accelerator's parameters (Triton's keys)."""
    options: dict[str, str] = {}
    for key, value in parameters.items():
        if key == "precision_mode":
            if value not in ("FP32", "FP16", "INT8"):
                raise fail(f"{where}.parameters precision_mode '{value}' is not FP32, FP16 or INT8")
            if value != "FP32":
                options[f"trt_{value.lower()}_enable"] = "True"
        elif key in TENSORRT_PARAMETERS:
            options[TENSORRT_PARAMETERS[key]] = value
        elif key.startswith("trt_"):
            options[key] = value
        else:
            raise fail(f"{where}.parameters {key} is not a TensorRT option")
    return options


def _count_parameter(key: str, value: str, fail: Callable[[str], ModelConfigError]) -> int:
    if not (value.isascii() and value.isdigit()):  # '²' is a digit to str.isdigit, not to int()
        raise fail(f"parameters {key} '{value}' is not a non-negative integer")
    return int(value)


def _enum_name(message: ProtoMessage, field: str) -> str:
    """The name of the enum value of ``message.field`` (e.g. ``TYPE_FP32``)."""
    descriptor: FieldDescriptor = message.DESCRIPTOR.fields_by_name[field]
    number = getattr(message, field)
    value = descriptor.enum_type.values_by_number.get(number) if descriptor.enum_type is not None else None
    return value.name if value is not None else str(number)


def _field_paths(descriptor: Descriptor, prefix: str = "", paths: dict[str, str] | None = None) -> dict[str, str]:
    """Each message type under ``descriptor`` -> the field path where it first appears (``dynamic_batching``)."""
    paths = {} if paths is None else paths
    paths.setdefault(descriptor.full_name, prefix)
    for field in descriptor.fields:
        message_type = field.message_type
        if message_type is not None and not message_type.GetOptions().map_entry and message_type.full_name not in paths:
            _field_paths(message_type, f"{prefix}.{field.name}" if prefix else field.name, paths)
    return paths


_MESSAGE_PATHS = _field_paths(TritonModelConfig.DESCRIPTOR)


def _parse_problem(source: str, text: str) -> str:
    """The load error for a parse error of ``source``: an unsupported field by its path and line, and why."""
    match = _PARSE_PROBLEM.search(text)
    if match is None:
        return f"{source} is not a valid Triton model configuration: {text}"
    parent = _MESSAGE_PATHS.get(match["type"], match["type"])
    path = f"{parent}.{match['field']}" if parent else match["field"]
    where = f"{source} line {match['line']}" if match["line"] else source
    reason = UNSUPPORTED_FIELDS.get(path, "the gateway does not support it")
    return f"{where}: {path} is not supported: {reason}"
