"""Unit tests of gateway.repository.triton_config: Triton's config.pbtxt mapped onto the gateway's config.

Each test writes a config.pbtxt as Triton users write them and reads it with the repository's own
reader (``read_config``, which also picks config.pbtxt or config.yaml), in process: no server. The
served behaviour of the same fields (reshape, version policy, instance kinds, overrides) is checked
against a real gateway in tests/test_triton_repository.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.repository.config import ModelConfigError, TensorConfig
from gateway.repository.model_repository import read_config
from gateway.repository.triton_config import parse_config_override

FULL_ONNX_CONFIG = """\
# A Triton config as users write them: comments, list syntax, enums by name.
name: "classifier"
platform: "onnxruntime_onnx"
max_batch_size: 16
default_model_filename: "classifier.onnx"
version_policy: { specific: { versions: [ 1, 3 ] } }
input [
  {
    name: "pixels"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 1, 8, 8 ]
    reshape: { shape: [ 64 ] }
  },
  { name: "names", data_type: TYPE_STRING, dims: [ -1 ] }
]
output [ { name: "logits", data_type: TYPE_FP32, dims: [ 10 ] } ]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 200
  default_queue_policy { max_queue_size: 32 }
}
instance_group [ { name: "cpus", count: 2, kind: KIND_CPU }, { count: 1, kind: KIND_CPU } ]
optimization {
  graph { level: 1 }
  execution_accelerators {
    gpu_execution_accelerator: [ { name: "tensorrt", parameters { key: "precision_mode" value: "FP16" } } ]
    cpu_execution_accelerator: [ { name: "openvino" } ]
  }
}
parameters { key: "intra_op_thread_count" value: { string_value: "2" } }
parameters { key: "inter_op_thread_count" value: { string_value: "1" } }
"""


def write_model(tmp_path: Path, pbtxt: str | None = None, yaml: str | None = None, name: str = "classifier") -> Path:
    model = tmp_path / name
    model.mkdir()
    if pbtxt is not None:
        (model / "config.pbtxt").write_text(pbtxt)
    if yaml is not None:
        (model / "config.yaml").write_text(yaml)
    return model


def load_error(tmp_path: Path, pbtxt: str) -> str:
    with pytest.raises(ModelConfigError) as caught:
        read_config(write_model(tmp_path, pbtxt))
    return str(caught.value)


def test_every_honoured_field_maps_onto_the_gateway_config(tmp_path: Path) -> None:
    config = read_config(write_model(tmp_path, FULL_ONNX_CONFIG))
    assert config.backend == "onnxruntime"
    assert config.max_batch_size == 16
    assert config.default_model_filename == "classifier.onnx"
    assert config.version_policy.select([1, 2, 3, 4]) == [1, 3]
    assert config.inputs == [
        TensorConfig(name="pixels", datatype="FP32", dims=[1, 8, 8], reshape=[64]),
        TensorConfig(name="names", datatype="BYTES", dims=[-1]),
    ]
    assert config.outputs == [TensorConfig(name="logits", datatype="FP32", dims=[10])]
    assert config.dynamic_batching is not None
    assert config.dynamic_batching.preferred_batch_size == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 200
    assert config.dynamic_batching.max_queue_size == 32
    assert (config.instance_count, config.instance_kind) == (3, "cpu")
    options = config.onnxruntime
    assert (options.intra_op_threads, options.inter_op_threads) == (2, 1)
    assert options.graph_optimization_level == "extended"
    # KIND_CPU instances: the GPU accelerator (TensorRT) does not apply, as in Triton.
    assert options.execution_providers == ["OpenVINOExecutionProvider", "CPUExecutionProvider"]
    assert options.provider_options == {}


def test_gpu_accelerators_come_first_with_their_options_on_auto_instances(tmp_path: Path) -> None:
    text = FULL_ONNX_CONFIG.replace("kind: KIND_CPU", "kind: KIND_AUTO").replace(
        '{ key: "precision_mode" value: "FP16" }',
        '{ key: "precision_mode" value: "FP16" } parameters { key: "max_workspace_size_bytes" value: "1073741824" }',
    )
    options = read_config(write_model(tmp_path, text)).onnxruntime
    assert options.execution_providers == [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "OpenVINOExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert options.provider_options == {
        "TensorrtExecutionProvider": {"trt_fp16_enable": "True", "trt_max_workspace_size": "1073741824"}
    }


@pytest.mark.parametrize(("level", "expected"), [("-1", "basic"), ("0", "all"), ("1", "extended"), ("2", "disable")])
def test_graph_levels_follow_tritons_onnxruntime_backend(tmp_path: Path, level: str, expected: str) -> None:
    text = f'backend: "onnxruntime"\noptimization {{ graph {{ level: {level} }} }}\n'
    assert read_config(write_model(tmp_path, text)).onnxruntime.graph_optimization_level == expected


def test_a_config_without_tensors_leaves_the_batch_size_to_the_artifact(tmp_path: Path) -> None:
    assert read_config(write_model(tmp_path, 'platform: "onnxruntime_onnx"\n')).max_batch_size is None
    with_tensors = 'input [ { name: "x" data_type: TYPE_FP32 dims: [ 2, 3 ] } ]\n'
    assert read_config(write_model(tmp_path, with_tensors, name="other")).max_batch_size == 0


def test_torchscript_and_savedmodel_parameters(tmp_path: Path) -> None:
    torch_config = read_config(
        write_model(
            tmp_path,
            'platform: "pytorch_libtorch"\nparameters { key: "INTRA_OP_THREAD_COUNT" value { string_value: "3" } }\n'
            'parameters { key: "INFERENCE_MODE" value { string_value: "true" } }\ninstance_group [{ kind: KIND_GPU }]',
        )
    )
    assert (torch_config.backend, torch_config.torch.threads, torch_config.instance_kind) == ("torch", 3, "gpu")
    assert torch_config.backend_options("torch").device == "cuda"  # type: ignore[attr-defined]
    tf_config = read_config(
        write_model(
            tmp_path,
            'backend: "tensorflow"\nparameters { key: "TF_SIGNATURE_DEF" value { string_value: "predict" } }\n',
            name="tf",
        )
    )
    assert (tf_config.backend, tf_config.tensorflow.signature_name) == ("tensorflow", "predict")


ENSEMBLE_CONFIG = """
name: "classify"
platform: "ensemble"
max_batch_size: 8
input [ { name: "RAW" data_type: TYPE_FP32 dims: [ 64 ] } ]
output [ { name: "LOGITS" data_type: TYPE_FP32 dims: [ 10 ] } ]
ensemble_scheduling {
  step [
    {
      model_name: "preprocess"
      model_version: -1
      input_map { key: "input" value: "RAW" }
      output_map { key: "output" value: "scaled" }
    },
    {
      model_name: "classifier"
      model_version: 2
      input_map { key: "input" value: "scaled" }
      output_map { key: "output" value: "LOGITS" }
    }
  ]
}
"""


def test_an_ensemble_maps_onto_the_pipeline_config_of_config_yaml(tmp_path: Path) -> None:
    from_triton = read_config(write_model(tmp_path, ENSEMBLE_CONFIG, name="classify"))
    ours = read_config(
        write_model(
            tmp_path,
            yaml="""
max_batch_size: 8
inputs: [{name: RAW, datatype: FP32, dims: [64]}]
outputs: [{name: LOGITS, datatype: FP32, dims: [10]}]
pipeline:
  steps:
    - {model_name: preprocess, input_map: {input: RAW}, output_map: {output: scaled}}
    - {model_name: classifier, model_version: 2, input_map: {input: scaled}, output_map: {output: LOGITS}}
""",
            name="ours",
        )
    )
    assert from_triton.pipeline is not None and from_triton.pipeline == ours.pipeline
    assert (from_triton.inputs, from_triton.outputs, from_triton.max_batch_size) == (
        ours.inputs,
        ours.outputs,
        ours.max_batch_size,
    )
    assert [step.model_version for step in from_triton.pipeline.steps] == [-1, 2]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (ENSEMBLE_CONFIG.replace('platform: "ensemble"', 'platform: "onnxruntime_onnx"'), 'platform "ensemble"'),
        (ENSEMBLE_CONFIG + "instance_group [ { count: 2 } ]", "leave out instance_group"),
        (ENSEMBLE_CONFIG.replace("model_version: 2", 'model_version: 2 model_namespace: "n"'), "model_namespace"),
        (ENSEMBLE_CONFIG.replace('output [ { name: "LOGITS" data_type: TYPE_FP32 dims: [ 10 ] } ]', ""), "outputs"),
    ],
)
def test_an_ensemble_the_gateway_cannot_run_is_a_load_error(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ModelConfigError, match=problem):
        read_config(write_model(tmp_path, text, name="classify"))


def test_model_warmup_maps_onto_the_warmup_requests_of_config_yaml(tmp_path: Path) -> None:
    config = read_config(
        write_model(
            tmp_path,
            """platform: "onnxruntime_onnx"
max_batch_size: 8
model_warmup [
  { name: "zeros" batch_size: 8 count: 2
    inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } } },
  { inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 4 ] input_data_file: "x.bin" } }
    inputs { key: "t" value: { data_type: TYPE_STRING dims: [ 1 ] random_data: true } } }
]
""",
        )
    )
    assert config == read_config(
        write_model(
            tmp_path,
            yaml="""warmup:
  - {name: zeros, batch_size: 8, count: 2, inputs: {x: {datatype: FP32, dims: [4], zero_data: true}}}
  - name: model_warmup[1]
    batch_size: 0
    inputs:
      x: {datatype: FP32, dims: [4], input_data_file: x.bin}
      t: {datatype: BYTES, dims: [1], random_data: true}
""",
            name="from_yaml",
        )
    ).model_copy(update={"backend": "onnxruntime", "max_batch_size": 8})
    (tmp_path / "bad").mkdir()
    problem = load_error(tmp_path / "bad", 'model_warmup [ { inputs { key: "x" value: { data_type: TYPE_FP32 } } } ]')
    assert "model_warmup[0] input 'x': give zero_data, random_data or input_data_file" in problem


@pytest.mark.parametrize(
    ("text", "field", "reason"),
    [
        ("sequence_batching { max_sequence_idle_microseconds: 5000000 }", "sequence_batching", "stateful"),
        ("response_cache { enable: true }", "response_cache", "response cache"),
        ("model_transaction_policy { decoupled: true }", "model_transaction_policy", "decoupled"),
        ("optimization { cuda { graphs: true } }", "optimization.cuda", "CUDA graphs"),
        ("optimization { input_pinned_memory { enable: true } }", "optimization.input_pinned_memory", "pinned"),
        ("dynamic_batching { priority_levels: 2 }", "dynamic_batching.priority_levels", "priorities"),
        ("dynamic_batching { preserve_ordering: true }", "dynamic_batching.preserve_ordering", "each batch"),
        (
            "dynamic_batching { default_queue_policy { default_timeout_microseconds: 5 } }",
            "dynamic_batching.default_queue_policy.default_timeout_microseconds",
            "timeout",
        ),
        ("input [ { name: 'x' data_type: TYPE_FP32 dims: [1] optional: true } ]", "input.optional", "every input"),
        (
            "output [ { name: 'y' data_type: TYPE_FP32 dims: [1] label_filename: 'l.txt' } ]",
            "output.label_filename",
            "classification",
        ),
        ("instance_group [ { count: 1 rate_limiter { priority: 1 } } ]", "instance_group.rate_limiter", "rate limiter"),
        ("a_field_triton_never_had: 1", "a_field_triton_never_had", "does not support it"),
    ],
)
def test_a_field_the_gateway_cannot_honour_is_named_with_its_line(
    tmp_path: Path, text: str, field: str, reason: str
) -> None:
    message = load_error(tmp_path, f'platform: "onnxruntime_onnx"\nmax_batch_size: 4\n{text}\n')
    assert message.startswith(f"config.pbtxt line 3: {field} is not supported"), message
    assert reason in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('name: "other"', "name 'other' is not the model folder's name 'classifier'"),
        ('platform: "tensorrt_plan"', "platform 'tensorrt_plan' is not served"),
        ('backend: "python"', "backend 'python' is not served (its model.py would run code"),
        ('platform: "onnxruntime_onnx" backend: "pytorch"', "name different backends"),
        ("instance_group [ { kind: KIND_MODEL } ]", "instance_group[0].kind KIND_MODEL is not supported"),
        ("instance_group [ { kind: KIND_GPU gpus: [ 1 ] } ]", "instance_group[0].gpus [1]"),
        ("instance_group [ { kind: KIND_GPU }, { kind: KIND_CPU } ]", "instance groups of several kinds"),
        ("input [ { name: 'x' data_type: TYPE_BF16 dims: [ 4 ] } ]", "input[0] 'x': data_type TYPE_BF16"),
        ("input [ { name: 'x' dims: [ 4 ] } ]", "input[0] 'x': data_type is missing"),
        ("input [ { name: 'x' data_type: TYPE_FP32 format: FORMAT_NHWC dims: [ 4 ] } ]", "needs 3 dims"),
        (
            "input [ { name: 'x' data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ 3 ] } } ]",
            "reshape [3] holds 3 elements, dims [4] hold 4",
        ),
        (
            'backend: "onnxruntime" parameters { key: "enable_mem_arena" value { string_value: "1" } }',
            "enable_mem_arena",
        ),
        ('backend: "onnxruntime" parameters { key: "execution_mode" value { string_value: "1" } }', "execution_mode"),
        (
            'backend: "onnxruntime" optimization { execution_accelerators { gpu_execution_accelerator: [ { name: "x" } ] } }',
            "gpu_execution_accelerator[0].name 'x' is not supported",
        ),
        (
            'backend: "onnxruntime" optimization { execution_accelerators { gpu_execution_accelerator: '
            '[ { name: "tensorrt" parameters { key: "precision_mode" value: "FP8" } } ] } }',
            "precision_mode 'FP8'",
        ),
        ('backend: "pytorch" optimization { graph { level: 1 } }', "applies to onnxruntime models only"),
        ('backend: "tensorflow" parameters { key: "TF_GRAPH_TAG" value { string_value: "train" } }', "TF_GRAPH_TAG"),
        ('default_model_filename: "m.onnx"', "default_model_filename needs the backend named"),
        ('backend: "onnxruntime" default_model_filename: "../m.onnx"', "plain file or folder name"),
        ("version_policy { latest { num_versions: 0 } }", "version_policy.latest.num_versions"),
        ("instance_group [ { kind: KIND_TPU } ]", "is not a valid Triton model configuration"),
    ],
)
def test_a_value_the_gateway_cannot_honour_is_named(tmp_path: Path, text: str, expected: str) -> None:
    message = load_error(tmp_path, text.replace("'", '"'))
    assert message.startswith("config.pbtxt"), message
    assert expected in message, message


def test_a_model_folder_with_both_configs_is_refused(tmp_path: Path) -> None:
    model = write_model(tmp_path, 'platform: "onnxruntime_onnx"\n', "max_batch_size: 4\n")
    with pytest.raises(ModelConfigError, match=r"holds both config\.yaml and config\.pbtxt; keep one"):
        read_config(model)


def test_a_config_yaml_beside_no_pbtxt_is_read_as_before(tmp_path: Path) -> None:
    assert read_config(write_model(tmp_path, yaml="max_batch_size: 4\n")).max_batch_size == 4


def test_the_config_override_is_tritons_json(tmp_path: Path) -> None:
    override = {
        "backend": "onnxruntime",
        "max_batch_size": 2,
        "version_policy": {"specific": {"versions": ["2"]}},
        "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": ["3"]}],
        "instance_group": [{"kind": "KIND_CPU", "count": 2}],
    }
    config = parse_config_override(json.dumps(override), "classifier")
    assert (config.max_batch_size, config.instance_count, config.instance_kind) == (2, 2, "cpu")
    assert config.version_policy.select([1, 2]) == [2]
    assert config.inputs == [TensorConfig(name="x", datatype="FP32", dims=[3])]
    with pytest.raises(ModelConfigError, match=r"the config override: sequence_batching is not supported"):
        parse_config_override('{"sequence_batching": {}}', "classifier")
    with pytest.raises(ModelConfigError, match=r"name 'other' is not the model folder's name"):
        parse_config_override('{"name": "other"}', "classifier")
    with pytest.raises(ModelConfigError, match=r"is not a valid Triton model configuration"):
        parse_config_override("not json", "classifier")
