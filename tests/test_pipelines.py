"""Pipelines of models (Triton's ensembles) run in process: a preprocessing model, then a classifier.

Both step models are trained in PyTorch and pushed with ``gateway push`` (ONNX, parity checked);
the pipeline is declared once in our config.yaml and once as Triton's ``ensemble_scheduling`` in a
``config.pbtxt``. Its answers must be exactly what the two models give when a client calls them one
after the other, over REST and gRPC; graphs that cannot run are load errors naming the fault.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as triton_grpc

from tests.conftest import GatewayProcess, run_push, start_gateway
from tests.torch_models import DigitsMLP, Standardize, train

PIPELINE = """
max_batch_size: 64
inputs: [{name: pixels, datatype: FP32, dims: [64]}]
outputs: [{name: logits, datatype: FP32, dims: [10]}]
pipeline:
  steps:
    - {model_name: classifier, input_map: {input: scaled}, output_map: {output: logits}}
    - {model_name: preprocess, input_map: {input: pixels}, output_map: {output: scaled}}
"""

ENSEMBLE = """
platform: "ensemble"
max_batch_size: 64
input [ { name: "RAW" data_type: TYPE_FP32 dims: [ 64 ] } ]
output [ { name: "LOGITS" data_type: TYPE_FP32 dims: [ 10 ] } ]
ensemble_scheduling {
  step [
    { model_name: "preprocess" model_version: -1
      input_map { key: "input" value: "RAW" } output_map { key: "output" value: "SCALED" } },
    { model_name: "classifier" model_version: 1
      input_map { key: "input" value: "SCALED" } output_map { key: "output" value: "LOGITS" } }
  ]
}
"""


def pipeline_config(steps: str) -> str:
    return (
        "inputs: [{name: pixels, datatype: FP32, dims: [64]}]\n"
        "outputs: [{name: logits, datatype: FP32, dims: [10]}]\n"
        f"max_batch_size: 64\npipeline:\n  steps:\n{steps}"
    )


def push_torch(module: torch.nn.Module, example: np.ndarray, name: str, repository: Path, folder: Path) -> None:
    program = torch.export.export(module, (torch.from_numpy(example),), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
    torch.export.save(program, folder / f"{name}.pt2")
    pushed = run_push(str(folder / f"{name}.pt2"), "--name", name, "--repository", str(repository))
    assert pushed.returncode == 0, pushed.stderr


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, digits_split) -> Iterator[GatewayProcess]:
    x_train, x_test, y_train, _ = digits_split
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1.0
    preprocess = Standardize(mean, std).eval()
    classifier = train(DigitsMLP(), ((x_train - mean) / std).astype(np.float32), y_train)
    root = tmp_path_factory.mktemp("pipeline-repository")
    sources = tmp_path_factory.mktemp("pipeline-sources")
    push_torch(preprocess, x_test[:4], "preprocess", root, sources)
    push_torch(classifier, x_test[:4], "classifier", root, sources)
    (root / "digits_pipeline").mkdir()
    (root / "digits_pipeline" / "config.yaml").write_text(PIPELINE)
    (root / "digits_ensemble" / "1").mkdir(parents=True)  # Triton's layout: an empty version folder
    (root / "digits_ensemble" / "config.pbtxt").write_text(ENSEMBLE)
    (root / "missing_step").mkdir()
    (root / "missing_step" / "config.yaml").write_text(
        pipeline_config("    - {model_name: tokenizer, input_map: {input: pixels}, output_map: {output: logits}}\n")
    )
    for name, other in (("cycle_a", "cycle_b"), ("cycle_b", "cycle_a")):
        (root / name).mkdir()
        (root / name / "config.yaml").write_text(
            pipeline_config(
                f"    - {{model_name: {other}, input_map: {{pixels: pixels}}, output_map: {{logits: logits}}}}\n"
            )
        )
    (root / "tensor_cycle").mkdir()
    (root / "tensor_cycle" / "config.yaml").write_text(
        pipeline_config(
            "    - {model_name: preprocess, input_map: {input: b}, output_map: {output: a}}\n"
            "    - {model_name: preprocess, input_map: {input: a}, output_map: {output: b}}\n"
            "    - {model_name: classifier, input_map: {input: a}, output_map: {output: logits}}\n"
        )
    )
    (root / "wrong_mapping").mkdir()
    (root / "wrong_mapping" / "config.yaml").write_text(
        pipeline_config(
            "    - {model_name: preprocess, input_map: {input: pixels}, output_map: {output: scaled}}\n"
            "    - {model_name: classifier, input_map: {features: scaled}, output_map: {output: logits}}\n"
        )
    )
    gateway = start_gateway(root, tmp_path_factory.mktemp("pipeline-logs") / "gateway.log")
    yield gateway
    gateway.stop()


def rest(server: GatewayProcess, model: str, name: str, x: np.ndarray) -> tuple[str, np.ndarray]:
    body = {"inputs": [{"name": name, "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
    response = server.http.post(f"/v2/models/{model}/infer", json=body)
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    return output["name"], np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])


def grpc(server: GatewayProcess, model: str, name: str, x: np.ndarray, output: str) -> np.ndarray:
    client = triton_grpc.InferenceServerClient(server.grpc_address)
    try:
        tensor = triton_grpc.InferInput(name, list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        answer: np.ndarray = client.infer(model, [tensor]).as_numpy(output)
        return answer
    finally:
        client.close()


def test_a_two_step_pipeline_answers_exactly_what_the_two_models_give_in_turn(server, digits_split) -> None:
    _, x_test, _, y_test = digits_split
    for start in range(0, 192, 64):
        x = x_test[start : start + 64]
        _, scaled = rest(server, "preprocess", "input", x)
        _, expected = rest(server, "classifier", "input", scaled)
        name, logits = rest(server, "digits_pipeline", "pixels", x)
        assert name == "logits"
        np.testing.assert_array_equal(logits, expected)
        np.testing.assert_array_equal(rest(server, "digits_ensemble", "RAW", x)[1], expected)
        np.testing.assert_array_equal(grpc(server, "digits_pipeline", "pixels", x, "logits"), expected)
        np.testing.assert_array_equal(grpc(server, "digits_ensemble", "RAW", x, "LOGITS"), expected)
        assert (expected.argmax(1) == y_test[start : start + 64]).mean() > 0.85


def test_metadata_describes_the_pipeline_s_own_inputs_and_outputs(server) -> None:
    metadata = server.http.get("/v2/models/digits_pipeline").json()
    assert metadata["platform"] == "ensemble"
    assert metadata["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}]
    assert metadata["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    config = server.http.get("/v2/models/digits_ensemble/config").json()
    assert [step["model_name"] for step in config["ensemble_scheduling"]["step"]] == ["preprocess", "classifier"]


def test_cycles_and_missing_steps_are_load_errors_naming_them(server) -> None:
    reasons = {
        entry["name"]: entry["reason"]
        for entry in server.http.post("/v2/repository/index", json={}).json()
        if entry["state"] == "UNAVAILABLE"
    }
    assert "step 1 (model 'tokenizer'): there is no model 'tokenizer'" in reasons["missing_step"]
    assert "pipeline cycle: cycle_a -> cycle_b -> cycle_a" in reasons["cycle_a"]
    assert "pipeline cycle: cycle_b -> cycle_a -> cycle_b" in reasons["cycle_b"]
    assert "pipeline cycle: step 1 (model 'preprocess'), step 2 (model 'preprocess')" in reasons["tensor_cycle"]
    assert server.http.post("/v2/models/cycle_a/infer", json={"inputs": []}).status_code == 503


def test_a_failing_step_is_named(server, digits_split) -> None:
    x = digits_split[1][:2]
    body = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
    answer = server.http.post("/v2/models/wrong_mapping/infer", json=body)
    assert answer.status_code == 400
    assert "pipeline 'wrong_mapping' step 2 (model 'classifier'): unknown input 'features'" in answer.json()["error"]
