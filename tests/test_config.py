"""Unit tests of gateway.repository.config: config.yaml validation, version policy and completion."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import yaml
from pydantic import ValidationError

from backends import create_backend
from backends.base import Backend, InferenceInputError, TensorSpec
from backends.onnxruntime import select_providers
from gateway.repository.config import (
    CONFIG_FILE,
    ModelConfig,
    ModelConfigError,
    TensorConfig,
    VersionPolicy,
    complete_config,
    full_shape,
    read_model_config,
)
from tests.conftest import write_identity_model, write_pair_model

FP32 = np.dtype(np.float32)
INT64 = np.dtype(np.int64)


class FakeBackend(Backend):
    """A backend that only declares its tensor specs."""

    platform = "fake_platform"

    def __init__(self, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> None:
        self._inputs = inputs
        self._outputs = outputs

    def run(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
        raise AssertionError("complete_config must not run the model")


def batchable_backend() -> FakeBackend:
    return FakeBackend(
        inputs=[TensorSpec("images", FP32, (-1, 3, 4)), TensorSpec("ids", INT64, (-1,))],
        outputs=[TensorSpec("scores", FP32, (-1, 10)), TensorSpec("labels", INT64, (-1, -1))],
    )


def fixed_backend() -> FakeBackend:
    """A model without a batch dim: its input's first dim is fixed."""
    return FakeBackend(
        inputs=[TensorSpec("images", FP32, (2, 3))],
        outputs=[TensorSpec("scores", FP32, (-1, 10))],
    )


def write_config(folder: Path, text: str) -> Path:
    (folder / CONFIG_FILE).write_text(text, encoding="utf-8")
    return folder


def tensor(name: str, datatype: str, dims: list[int]) -> TensorConfig:
    return TensorConfig(name=name, datatype=datatype, dims=dims)  # type: ignore[arg-type]


# --- read_model_config -------------------------------------------------------------------------


def test_read_missing_file_gives_defaults(tmp_path: Path) -> None:
    assert read_model_config(tmp_path) == ModelConfig()


def test_read_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert read_model_config(write_config(tmp_path, "")) == ModelConfig()


def test_defaults_leave_completion_to_the_artifact() -> None:
    config = ModelConfig()
    assert config.backend is None
    assert config.max_batch_size is None
    assert config.inputs == []
    assert config.outputs == []
    assert config.instance_count == 1
    # CUDA where onnxruntime-gpu finds a GPU, else CPU (see test_default_providers_fall_back_quietly).
    assert config.onnxruntime.execution_providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert (config.torch.threads, config.torch.device) == (0, "auto")
    assert config.tensorflow.signature_name == "serving_default"


def test_read_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match="YAML"):
        read_model_config(write_config(tmp_path, "inputs: [1,\n"))


def test_read_non_utf8_file_is_invalid_yaml(tmp_path: Path) -> None:
    (tmp_path / CONFIG_FILE).write_bytes(b"max_batch_size: \xff\xfe\n")
    with pytest.raises(ModelConfigError, match="YAML"):
        read_model_config(tmp_path)


def test_read_top_level_list_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match=r"\(top level\)"):
        read_model_config(write_config(tmp_path, "- max_batch_size: 1\n"))


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("instance_cnt: 2\n", "instance_cnt"),
        ("max_batch_size: -3\n", "max_batch_size"),
        ("instance_count: 0\n", "instance_count"),
        ("inputs: [{name: x, datatype: FLOAT, dims: [1]}]\n", "inputs.0.datatype"),
        ("inputs: [{name: x, datatype: FP32}]\n", "inputs.0.dims"),
        ("outputs: [{name: y, datatype: FP32, dims: [1], shape: [1]}]\n", "outputs.0.shape"),
        ("onnxruntime: {intra_op_threads: -1}\n", "onnxruntime.intra_op_threads"),
        ("version_policy: {latest: {num_versions: 0}}\n", "version_policy.latest.num_versions"),
    ],
)
def test_read_bad_field_names_its_path(tmp_path: Path, text: str, path: str) -> None:
    with pytest.raises(ModelConfigError, match=rf"invalid: {re.escape(path)}:"):
        read_model_config(write_config(tmp_path, text))


def test_read_dim_below_minus_one_is_rejected(tmp_path: Path) -> None:
    text = "inputs: [{name: x, datatype: FP32, dims: [3, -2]}]\n"
    with pytest.raises(ModelConfigError, match=r"inputs\.0: .*dims \[3, -2\]"):
        read_model_config(write_config(tmp_path, text))


def test_read_two_version_policies_is_rejected(tmp_path: Path) -> None:
    text = "version_policy: {latest: {num_versions: 2}, all: {}}\n"
    with pytest.raises(ModelConfigError, match=r"version_policy.*exactly one"):
        read_model_config(write_config(tmp_path, text))


def test_read_full_valid_config(tmp_path: Path) -> None:
    text = """\
backend: onnxruntime
max_batch_size: 16
instance_count: 2
inputs:
  - {name: images, datatype: FP32, dims: [3, -1]}
outputs:
  - {name: scores, datatype: FP32, dims: [10]}
version_policy:
  specific: {versions: [1, 3]}
onnxruntime:
  execution_providers: [CUDA, CPU]
  intra_op_threads: 1
"""
    config = read_model_config(write_config(tmp_path, text))
    assert config.backend == "onnxruntime"
    assert config.max_batch_size == 16
    assert config.instance_count == 2
    assert config.inputs == [tensor("images", "FP32", [3, -1])]
    assert config.outputs == [tensor("scores", "FP32", [10])]
    assert config.version_policy.select([1, 2, 3]) == [1, 3]
    assert config.onnxruntime.execution_providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert config.onnxruntime.intra_op_threads == 1


def test_read_provider_names_are_normalized_case_insensitively(tmp_path: Path) -> None:
    text = "onnxruntime: {execution_providers: [tensorrt, cuda, CPUExecutionProvider]}\n"
    config = read_model_config(write_config(tmp_path, text))
    assert config.onnxruntime.execution_providers == [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]


# --- VersionPolicy -----------------------------------------------------------------------------


def test_version_policy_default_serves_the_latest_version() -> None:
    assert VersionPolicy().select([3, 1, 2]) == [3]


def test_version_policy_latest_two() -> None:
    policy = VersionPolicy.model_validate({"latest": {"num_versions": 2}})
    assert policy.select([1, 4, 2, 3]) == [3, 4]


def test_version_policy_latest_more_than_available() -> None:
    policy = VersionPolicy.model_validate({"latest": {"num_versions": 5}})
    assert policy.select([2, 1]) == [1, 2]


def test_version_policy_all() -> None:
    policy = VersionPolicy.model_validate({"all": {}})
    assert policy.select([3, 1, 2]) == [1, 2, 3]


def test_version_policy_specific() -> None:
    policy = VersionPolicy.model_validate({"specific": {"versions": [3, 1]}})
    assert policy.select([1, 2, 3, 4]) == [1, 3]


def test_version_policy_specific_skips_versions_not_available() -> None:
    policy = VersionPolicy.model_validate({"specific": {"versions": [2, 7]}})
    assert policy.select([1, 2, 3]) == [2]


def test_version_policy_of_no_versions_is_empty() -> None:
    assert VersionPolicy().select([]) == []


@pytest.mark.parametrize(
    "policies",
    [
        {"latest": {"num_versions": 1}, "all": {}},
        {"all": {}, "specific": {"versions": [1]}},
        {"latest": {}, "specific": {"versions": [1]}},
    ],
)
def test_version_policy_two_policies_are_rejected(policies: dict[str, object]) -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        VersionPolicy.model_validate(policies)


@pytest.mark.parametrize(("text", "expected"), [("all:", [1, 2, 3]), ("latest:", [3])])
def test_version_policy_bare_key_means_its_defaults(tmp_path: Path, text: str, expected: list[int]) -> None:
    config = read_model_config(write_config(tmp_path, f"version_policy:\n  {text}\n"))
    assert config.version_policy.select([1, 2, 3]) == expected


def test_version_policy_specific_needs_a_version() -> None:
    with pytest.raises(ValidationError):
        VersionPolicy.model_validate({"specific": {"versions": []}})


# --- complete_config ---------------------------------------------------------------------------


def test_complete_batchable_model_uses_the_default_max_batch_size() -> None:
    config = complete_config(ModelConfig(), "onnxruntime", batchable_backend(), 8)
    assert config.backend == "onnxruntime"
    assert config.max_batch_size == 8


def test_complete_batchable_model_drops_the_batch_dim() -> None:
    config = complete_config(ModelConfig(), "onnxruntime", batchable_backend(), 8)
    assert config.inputs == [tensor("images", "FP32", [3, 4]), tensor("ids", "INT64", [])]
    assert config.outputs == [tensor("scores", "FP32", [10]), tensor("labels", "INT64", [-1])]


def test_complete_non_batchable_model_keeps_full_dims() -> None:
    config = complete_config(ModelConfig(), "onnxruntime", fixed_backend(), 8)
    assert config.max_batch_size == 0
    assert config.inputs == [tensor("images", "FP32", [2, 3])]
    assert config.outputs == [tensor("scores", "FP32", [-1, 10])]


def test_complete_scalar_tensor_makes_the_model_non_batchable() -> None:
    backend = FakeBackend([TensorSpec("x", FP32, (-1,))], [TensorSpec("total", FP32, ())])
    config = complete_config(ModelConfig(), "onnxruntime", backend, 8)
    assert config.max_batch_size == 0
    assert config.outputs == [tensor("total", "FP32", [])]


def test_complete_explicit_zero_keeps_the_batch_dim_in_dims() -> None:
    config = complete_config(ModelConfig(max_batch_size=0), "onnxruntime", batchable_backend(), 8)
    assert config.max_batch_size == 0
    assert config.inputs[0] == tensor("images", "FP32", [-1, 3, 4])


def test_complete_explicit_max_batch_size_wins_over_the_default() -> None:
    config = complete_config(ModelConfig(max_batch_size=4), "onnxruntime", batchable_backend(), 8)
    assert config.max_batch_size == 4


def test_complete_max_batch_size_on_non_batchable_model_names_the_tensor() -> None:
    with pytest.raises(ModelConfigError, match=r"'images' has shape \[2, 3\]"):
        complete_config(ModelConfig(max_batch_size=4), "onnxruntime", fixed_backend(), 8)


def test_complete_keeps_the_other_fields() -> None:
    config = ModelConfig(instance_count=3, version_policy=VersionPolicy.model_validate({"all": {}}))
    completed = complete_config(config, "onnxruntime", batchable_backend(), 8)
    assert completed.instance_count == 3
    assert completed.version_policy == config.version_policy


def test_complete_configured_inputs_matching_the_model_are_kept() -> None:
    inputs = [tensor("ids", "INT64", []), tensor("images", "FP32", [3, 4])]
    config = complete_config(ModelConfig(inputs=inputs), "onnxruntime", batchable_backend(), 8)
    assert config.inputs == inputs


def test_complete_configured_fixed_dim_for_a_variable_model_dim_is_kept() -> None:
    outputs = [tensor("labels", "INT64", [5])]
    config = complete_config(ModelConfig(outputs=outputs), "onnxruntime", batchable_backend(), 8)
    assert config.outputs == outputs


def test_complete_unknown_input_is_rejected() -> None:
    inputs = [tensor("images", "FP32", [3, 4]), tensor("ids", "INT64", []), tensor("mask", "BOOL", [4])]
    with pytest.raises(ModelConfigError, match=r"inputs: mask not in the model"):
        complete_config(ModelConfig(inputs=inputs), "onnxruntime", batchable_backend(), 8)


def test_complete_input_listed_twice_is_rejected() -> None:
    inputs = [tensor("images", "FP32", [3, 4]), tensor("ids", "INT64", []), tensor("ids", "INT64", [])]
    with pytest.raises(ModelConfigError, match=r"inputs: ids listed more than once"):
        complete_config(ModelConfig(inputs=inputs), "onnxruntime", batchable_backend(), 8)


def test_complete_missing_input_is_rejected() -> None:
    inputs = [tensor("images", "FP32", [3, 4])]
    with pytest.raises(ModelConfigError, match=r"inputs: the model also needs ids"):
        complete_config(ModelConfig(inputs=inputs), "onnxruntime", batchable_backend(), 8)


def test_complete_wrong_input_datatype_is_rejected() -> None:
    inputs = [tensor("images", "FP64", [3, 4]), tensor("ids", "INT64", [])]
    with pytest.raises(ModelConfigError, match=r"inputs\.images: datatype FP64 but the model has FP32"):
        complete_config(ModelConfig(inputs=inputs), "onnxruntime", batchable_backend(), 8)


@pytest.mark.parametrize(
    "dims",
    [
        [3, 5],  # fixed dim differs
        [-1, 4],  # variable dim where the model's is fixed
        [3],  # rank too small
        [-1, 3, 4],  # batch dim included although max_batch_size > 0
    ],
)
def test_complete_incompatible_input_dims_are_rejected(dims: list[int]) -> None:
    inputs = [tensor("images", "FP32", dims), tensor("ids", "INT64", [])]
    with pytest.raises(ModelConfigError, match=r"inputs\.images: dims .* do not fit the model's \[3, 4\]"):
        complete_config(ModelConfig(inputs=inputs), "onnxruntime", batchable_backend(), 8)


def test_complete_configured_outputs_may_be_a_subset() -> None:
    outputs = [tensor("labels", "INT64", [-1])]
    config = complete_config(ModelConfig(outputs=outputs), "onnxruntime", batchable_backend(), 8)
    assert config.outputs == outputs
    assert [spec.name for spec in config.inputs] == ["images", "ids"]


def test_complete_unknown_output_is_rejected() -> None:
    outputs = [tensor("probabilities", "FP32", [10])]
    with pytest.raises(ModelConfigError, match=r"outputs: probabilities not in the model"):
        complete_config(ModelConfig(outputs=outputs), "onnxruntime", batchable_backend(), 8)


def test_complete_wrong_output_datatype_is_rejected() -> None:
    outputs = [tensor("scores", "FP16", [10])]
    with pytest.raises(ModelConfigError, match=r"outputs\.scores: datatype FP16"):
        complete_config(ModelConfig(outputs=outputs), "onnxruntime", batchable_backend(), 8)


# --- full_shape --------------------------------------------------------------------------------


def test_full_shape_prepends_batch_dim_when_batching() -> None:
    assert full_shape(tensor("x", "FP32", [3, -1]), 4) == [-1, 3, -1]


def test_full_shape_is_dims_without_batching() -> None:
    assert full_shape(tensor("x", "FP32", [3, -1]), 0) == [3, -1]


def test_full_shape_of_batched_scalar() -> None:
    assert full_shape(tensor("x", "FP32", []), 1) == [-1]


# --- select_providers --------------------------------------------------------------------------


def test_select_providers_drops_unavailable_cuda_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="backends.onnxruntime"):
        chosen = select_providers(["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"])
    assert chosen == ["CPUExecutionProvider"]
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "CUDAExecutionProvider" in warnings[0].getMessage()


def test_select_providers_keeps_order_and_appends_cpu(caplog: pytest.LogCaptureFixture) -> None:
    available = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with caplog.at_level(logging.WARNING, logger="backends.onnxruntime"):
        chosen = select_providers(["CUDAExecutionProvider", "CUDAExecutionProvider"], available)
    assert chosen == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


def test_default_providers_fall_back_quietly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The default list is not the user's request: a provider missing from it is skipped without a warning."""
    write_identity_model(tmp_path / "model.onnx", "FP32")
    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    with caplog.at_level(logging.WARNING, logger="backends.onnxruntime"):
        backend = create_backend("onnxruntime", tmp_path)
    assert backend.metadata_parameters["execution_providers"][-1] == "CPUExecutionProvider"
    assert not caplog.records
    if not cuda:
        asked = ModelConfig.model_validate({"onnxruntime": {"execution_providers": ["CUDA", "CPU"]}})
        with caplog.at_level(logging.WARNING, logger="backends.onnxruntime"):
            backend = create_backend("onnxruntime", tmp_path, asked.onnxruntime)
        assert backend.metadata_parameters == {"execution_providers": ["CPUExecutionProvider"], "io_binding": False}
        assert "CUDAExecutionProvider is not available" in caplog.text


def test_backend_sections_and_names() -> None:
    config = ModelConfig.model_validate(
        {"backend": "torch", "torch": {"threads": 2, "device": "cpu"}, "tensorflow": {"signature_name": "predict"}}
    )
    assert config.backend_options("torch") is config.torch and config.torch.threads == 2
    assert config.backend_options("tensorflow").model_dump() == {"signature_name": "predict", "threads": 0}
    for bad in ({"backend": "pytorch"}, {"torch": {"device": "tpu"}}, {"tensorflow": {"signature": "x"}}):
        with pytest.raises(ValidationError):
            ModelConfig.model_validate(bad)


def test_declared_signature_adds_the_batch_dim_unless_max_batch_size_is_0() -> None:
    inputs = [tensor("x", "FP32", [64])]
    outputs = [tensor("y", "INT64", [-1])]
    batched = ModelConfig(inputs=inputs, outputs=outputs).declared_signature()
    assert batched.inputs == (TensorSpec("x", FP32, (-1, 64)),)
    assert batched.outputs == (TensorSpec("y", INT64, (-1, -1)),)
    unbatched = ModelConfig(max_batch_size=0, inputs=inputs, outputs=outputs).declared_signature()
    assert unbatched.inputs == (TensorSpec("x", FP32, (64,)),)


@pytest.mark.parametrize("mode", ["on", "off"])
def test_io_binding_gives_the_outputs_of_a_plain_run(tmp_path: Path, mode: str) -> None:
    """I/O binding (auto: on a GPU; ``on``, YAML's true, binds on the CPU too) answers as ``InferenceSession.run`` does:
    the outputs asked for, in their order, from inputs that need not be contiguous; bad inputs are input errors;
    a model with string tensors runs without it."""
    write_pair_model(tmp_path / "model.onnx", width=3)
    options = ModelConfig.model_validate(yaml.safe_load(f"onnxruntime:\n  io_binding: {mode}\n")).onnxruntime
    backend = create_backend("onnxruntime", tmp_path, options)
    assert backend.metadata_parameters["io_binding"] is (mode == "on")
    a = np.arange(12, dtype=np.float32).reshape(3, 4).T  # [4, 3], not C-contiguous
    b = np.full((4, 3), 0.5, dtype=np.float32)
    outputs = backend.run({"a": a, "b": b}, ["product", "sum"])
    assert list(outputs) == ["product", "sum"]
    np.testing.assert_array_equal(outputs["product"], a * 0.5)
    np.testing.assert_array_equal(outputs["sum"], a + 0.5)
    assert list(backend.run({"a": a, "b": b}, ["sum"])) == ["sum"]
    with pytest.raises(InferenceInputError):
        backend.run({"a": np.zeros((2, 5), np.float32), "b": np.zeros((2, 5), np.float32)}, ["sum"])
    write_identity_model(tmp_path / "strings" / "model.onnx", "BYTES")
    strings = create_backend("onnxruntime", tmp_path / "strings", options)
    assert strings.metadata_parameters["io_binding"] is False
    answer = strings.run({"input": np.array([[b"x", b"yz"]], dtype=np.object_)}, ["output"])
    assert answer["output"].tolist() == [[b"x", b"yz"]]
