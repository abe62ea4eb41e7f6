"""TF Serving users move in unchanged: its layout, its models.config, its gRPC API and version labels.

Models are SavedModels exported in the test (a Keras model, and tf.Modules whose signatures take
serialized tf.Examples) in TF Serving's layout: numbered version folders that are themselves SavedModels.
One gateway serves a models.config with base paths outside its model repository, and a repository
holding a TF Serving layout model; clients are tensorflow-serving-api's own gRPC stubs and REST.
"""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pb2

from tests.conftest import ADMIN_HEADERS, REPO_ROOT, SAMPLES, GatewayProcess, start_gateway
from tests.proto_compat import assert_wire_compatible

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
pytest.importorskip("tensorflow_serving")
from tensorflow_serving.apis import (  # noqa: E402
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tensorflow_serving.config import model_server_config_pb2  # noqa: E402

#: Per version of the Keras model, the bias of its two outputs: y = 0.5 * sum(x) + bias.
BIASES = {1: (2.0, 3.0), 2: (10.0, 20.0), 3: (100.0, 200.0)}


def export_keras_version(path: Path, bias: tuple[float, float]) -> None:
    """A Keras model y = x @ 0.5 + bias (x: [batch, 3] float32, y: [batch, 2]) exported as a SavedModel at ``path``."""
    inputs = keras.Input((3,), name="x")
    model = keras.Model(inputs, keras.layers.Dense(2, name="y")(inputs))
    model.layers[-1].set_weights([np.full((3, 2), 0.5, np.float32), np.array(bias, np.float32)])
    model.export(str(path), verbose=False)


def expected_y(x: np.ndarray, version: int) -> np.ndarray:
    return np.asarray(x.sum(axis=1, keepdims=True) * 0.5 + np.array(BIASES[version]), dtype=np.float32)


class _ExampleModel(tf.Module):
    """Signatures over serialized tf.Examples with a float feature ``x`` of 2 values (and ``w``, default 1)."""

    def _features(self, serialized: Any) -> tuple[Any, Any]:
        parsed = tf.io.parse_example(
            serialized,
            {
                "x": tf.io.FixedLenFeature([2], tf.float32),
                "w": tf.io.FixedLenFeature([1], tf.float32, default_value=[1.0]),
            },
        )
        return parsed["x"], parsed["w"]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify(self, inputs: Any) -> dict[str, Any]:
        x, w = self._features(inputs)
        scores = tf.nn.softmax(x * w)
        classes = tf.tile(tf.constant([["neg", "pos"]]), [tf.shape(inputs)[0], 1])
        return {"classes": classes, "scores": scores}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress(self, inputs: Any) -> dict[str, Any]:
        x, w = self._features(inputs)
        return {"outputs": tf.reduce_sum(x, axis=1) * w[:, 0]}


def export_example_model(path: Path, signature: str) -> None:
    module = _ExampleModel()
    tf.saved_model.save(module, str(path), signatures={"serving_default": getattr(module, signature)})


def example(x: list[float], w: float | None = None) -> Any:
    features = {"x": tf.train.Feature(float_list=tf.train.FloatList(value=x))}
    if w is not None:
        features["w"] = tf.train.Feature(float_list=tf.train.FloatList(value=[w]))
    return tf.train.Example(features=tf.train.Features(feature=features))


@pytest.fixture(scope="module")
def tfserving_layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Base paths in TF Serving's layout: a Keras model in versions 1-3, a classifier; a repository with a regressor."""
    root = tmp_path_factory.mktemp("tfserving")
    linear = root / "bases" / "linear"
    for version, bias in BIASES.items():
        export_keras_version(linear / str(version), bias)
    export_example_model(root / "bases" / "classifier" / "1", "classify")
    repository = root / "repository"
    export_example_model(repository / "regressor" / "1", "regress")
    (repository / "regressor" / "config.yaml").write_text("version_labels: {stable: 1}\n")
    config = root / "models.config"
    config.write_text(
        f"""
model_config_list {{
  config {{
    name: "linear"
    base_path: "{linear}"
    model_platform: "tensorflow"
    model_version_policy {{ specific {{ versions: 1 versions: 2 }} }}
    version_labels {{ key: "stable" value: 1 }}
    version_labels {{ key: "canary" value: 2 }}
  }}
  config {{
    name: "classifier"
    base_path: "{root / "bases" / "classifier"}"
    model_platform: "tensorflow"
  }}
  config {{
    name: "mislabelled"
    base_path: "{linear}"
    model_version_policy {{ latest {{ num_versions: 1 }} }}
    version_labels {{ key: "stable" value: 1 }}
  }}
}}
"""
    )
    return {"root": root, "repository": repository, "config": config}


@pytest.fixture(scope="module")
def tfs_gateway(tfserving_layout: dict[str, Path]) -> Iterator[GatewayProcess]:
    server = start_gateway(
        tfserving_layout["repository"],
        tfserving_layout["root"] / "gateway.log",
        "--model-config-file",
        str(tfserving_layout["config"]),
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def channel(tfs_gateway: GatewayProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(tfs_gateway.grpc_address) as opened:
        yield opened


def predict_request(name: str, x: np.ndarray, version: int | None = None, label: str | None = None) -> Any:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(x))
    return request


X = np.array([[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]], dtype=np.float32)


def test_predict_by_version_label_and_default_through_tf_servings_stubs(channel: grpc.Channel) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    # The specific policy serves 1 and 2 (3 is on disk): the default is the highest served.
    for version, label, answered in [
        (None, None, 2),
        (1, None, 1),
        (2, None, 2),
        (None, "stable", 1),
        (None, "canary", 2),
    ]:
        response = stub.Predict(predict_request("linear", X, version, label), timeout=30)
        assert response.model_spec.name == "linear"
        assert response.model_spec.version.value == answered, (version, label)
        assert response.model_spec.signature_name == "serving_default"
        y = tf.make_ndarray(response.outputs["output_0"])
        np.testing.assert_allclose(y, expected_y(X, answered), rtol=1e-6)
        # Typed values, as TF Serving answers: clients reading float_val work.
        assert list(response.outputs["output_0"].float_val) == y.ravel().tolist()
    # Typed float_val in the request (one value fills the tensor, as TensorFlow reads it), and output_filter.
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "linear"
    request.model_spec.version_label = "stable"
    request.model_spec.signature_name = "serving_default"
    request.inputs["x"].dtype = tf.float32.as_datatype_enum
    request.inputs["x"].tensor_shape.dim.add(size=2)
    request.inputs["x"].tensor_shape.dim.add(size=3)
    request.inputs["x"].float_val.append(1.0)
    request.output_filter.append("output_0")
    response = stub.Predict(request, timeout=30)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["output_0"]), expected_y(np.ones((2, 3)), 1))


def test_get_model_metadata_packs_the_signature_def_map(channel: grpc.Channel) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "linear"
    request.model_spec.version_label = "stable"
    response = stub.GetModelMetadata(request, timeout=30)
    assert (response.model_spec.name, response.model_spec.version.value) == ("linear", 1)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    signature = signatures.signature_def["serving_default"]
    assert signature.method_name == "tensorflow/serving/predict"
    assert signature.inputs["x"].dtype == tf.float32.as_datatype_enum
    assert [dim.size for dim in signature.inputs["x"].tensor_shape.dim] == [-1, 3]
    assert [dim.size for dim in signature.outputs["output_0"].tensor_shape.dim] == [-1, 2]

    request.ClearField("metadata_field")
    with pytest.raises(grpc.RpcError) as error:
        stub.GetModelMetadata(request, timeout=30)
    assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_get_model_status_by_version_and_label(channel: grpc.Channel) -> None:
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "linear"
    response = stub.GetModelStatus(request, timeout=30)
    available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert [(s.version, s.state, s.status.error_code) for s in response.model_version_status] == [
        (1, available, 0),
        (2, available, 0),
    ]
    request.model_spec.version_label = "canary"
    assert [s.version for s in stub.GetModelStatus(request, timeout=30).model_version_status] == [2]
    request.model_spec.version.value = 3  # on disk, not served by the policy
    with pytest.raises(grpc.RpcError) as error:
        stub.GetModelStatus(request, timeout=30)
    assert error.value.code() is grpc.StatusCode.NOT_FOUND


def test_classify_and_regress_on_models_whose_signature_takes_examples(
    channel: grpc.Channel, tfs_gateway: GatewayProcess
) -> None:
    # Zeros are not serialized tf.Examples: the generated warmup fails, and the model serves without it.
    assert "model classifier version 1 serves without warmup: warmup request (generated, batch 1) failed" in (
        tfs_gateway.logs()
    )
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "classifier"
    request.input.example_list.examples.extend([example([0.0, 2.0]), example([1.0, 1.0])])
    response = stub.Classify(request, timeout=30)
    assert response.model_spec.version.value == 1
    rows = [[(c.label, c.score) for c in row.classes] for row in response.result.classifications]
    assert [[label for label, _ in row] for row in rows] == [["neg", "pos"], ["neg", "pos"]]
    expected = tf.nn.softmax(np.array([[0.0, 2.0], [1.0, 1.0]], np.float32)).numpy()
    np.testing.assert_allclose([[score for _, score in row] for row in rows], expected, rtol=1e-6)

    regression = regression_pb2.RegressionRequest()
    regression.model_spec.name = "regressor"
    regression.model_spec.version_label = "stable"  # from the model's config.yaml
    context = regression.input.example_list_with_context
    context.context.CopyFrom(example([0.0, 0.0], w=2.0))
    context.examples.extend([example([1.0, 2.0]), example([3.0, 4.0], w=10.0)])
    answer = stub.Regress(regression, timeout=30)
    # The context's w (2) applies to each example, whose own features win (w=10 for the second).
    assert [r.value for r in answer.result.regressions] == [6.0, 70.0]

    for call, message in [(stub.Classify, "cannot Classify"), (stub.Regress, "cannot Regress")]:
        wrong = (
            classification_pb2.ClassificationRequest if call is stub.Classify else regression_pb2.RegressionRequest
        )()
        wrong.model_spec.name = "linear"
        wrong.input.example_list.examples.append(example([1.0, 2.0]))
        with pytest.raises(grpc.RpcError) as error:
            call(wrong, timeout=30)
        assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert message in error.value.details() and "serialized tf.Examples" in error.value.details()
    empty = classification_pb2.ClassificationRequest()
    empty.model_spec.name = "classifier"
    with pytest.raises(grpc.RpcError) as error:
        stub.Classify(empty, timeout=30)
    assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "Input is empty" in error.value.details()


def _code(call: Any, request: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as error:
        call(request, timeout=30)
    return error.value.code(), error.value.details()


def test_errors_have_tf_servings_status_codes(channel: grpc.Channel) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    assert _code(stub.Predict, predict_request("nope", X))[0] is grpc.StatusCode.NOT_FOUND
    assert _code(stub.Predict, predict_request("linear", X, version=3))[0] is grpc.StatusCode.NOT_FOUND
    code, details = _code(stub.Predict, predict_request("linear", X, label="beta"))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "Unrecognized servable version label" in details
    # Bad tensors: the wrong dtype, the wrong shape, tensor_content that does not fit its shape.
    wrong_dtype = predict_request("linear", X.astype(np.float64))
    code, details = _code(stub.Predict, wrong_dtype)
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "'x'" in details
    assert _code(stub.Predict, predict_request("linear", X[:, :2]))[0] is grpc.StatusCode.INVALID_ARGUMENT
    short = predict_request("linear", X)
    short.inputs["x"].tensor_content = short.inputs["x"].tensor_content[:-4]
    code, details = _code(stub.Predict, short)
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "bytes" in details
    other_signature = predict_request("linear", X)
    other_signature.model_spec.signature_name = "classify"
    code, details = _code(stub.Predict, other_signature)
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "serving_default" in details
    # MultiInference is not served.
    code, _ = _code(stub.MultiInference, inference_pb2.MultiInferenceRequest())
    assert code is grpc.StatusCode.UNIMPLEMENTED


def test_rest_routes_by_label(tfs_gateway: GatewayProcess) -> None:
    http = tfs_gateway.http
    answer = http.post("/v1/models/linear/labels/stable:predict", json={"instances": X.tolist()})
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(answer.json()["predictions"], expected_y(X, 1), rtol=1e-6)
    answer = http.post("/v1/models/linear/labels/canary:predict", json={"inputs": {"x": X.tolist()}})
    np.testing.assert_allclose(answer.json()["outputs"], expected_y(X, 2), rtol=1e-6)
    answer = http.post("/v1/models/linear/labels/beta:predict", json={"instances": X.tolist()})
    assert answer.status_code == 400 and "Unrecognized servable version label" in answer.json()["error"]
    status = http.get("/v1/models/linear/labels/canary").json()
    assert status == {
        "model_version_status": [
            {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    metadata = http.get("/v1/models/linear/labels/stable/metadata").json()
    assert metadata["model_spec"]["version"] == "1"
    # A label from the model's config.yaml; the examples as TF Serving's REST API takes bytes.
    serialized = base64.b64encode(example([1.0, 2.0], w=3.0).SerializeToString()).decode()
    answer = http.post("/v1/models/regressor/labels/stable:predict", json={"instances": [{"b64": serialized}]})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"predictions": [9.0]}


def test_a_label_naming_a_version_not_served_fails_the_models_load(tfs_gateway: GatewayProcess) -> None:
    entries = tfs_gateway.http.post("/v2/repository/index", json={}).json()
    reasons = [entry["reason"] for entry in entries if entry["name"] == "mislabelled"]
    assert any("'stable' names version 1, which is not served" in reason for reason in reasons), entries


def test_tfserving_grpc_requests_are_counted_under_their_protocol(
    tfs_gateway: GatewayProcess, channel: grpc.Channel
) -> None:
    prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(predict_request("linear", X), timeout=30)
    metrics = tfs_gateway.http.get("/metrics").text
    assert 'protocol="tfserving-grpc"' in metrics


def test_models_config_fields_the_gateway_cannot_honour_stop_the_start(tmp_path: Path) -> None:
    config = tmp_path / "models.config"
    config.write_text(
        'model_config_list { config { name: "m" base_path: "/models/m" logging_config { } } }\n', encoding="utf-8"
    )
    started = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--model-repository",
            str(tmp_path),
            "--model-config-file",
            str(config),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode != 0
    assert "logging_config" in started.stderr, started.stderr


# -- TF Serving's warmup file ----------------------------------------------------------------------------------


def write_tf_serving_warmup(saved_model: Path, records: list[Any]) -> Path:
    """``assets.extra/tf_serving_warmup_requests`` of ``saved_model``, written with TensorFlow's TFRecordWriter."""
    path = saved_model / "assets.extra" / "tf_serving_warmup_requests"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record.SerializeToString())
    return path


def predict_log(x: np.ndarray, input_name: str = "x") -> Any:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "linear"
    request.inputs[input_name].CopyFrom(tf.make_tensor_proto(x))
    return prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))


def test_a_savedmodels_tf_serving_warmup_requests_run_before_it_serves_and_bad_ones_fail_its_load(
    tmp_path: Path,
) -> None:
    repository = tmp_path / "repository"
    export_keras_version(repository / "linear" / "1", BIASES[1])
    write_tf_serving_warmup(repository / "linear" / "1", [predict_log(X), predict_log(X[:1]), predict_log(X)])
    gateway = start_gateway(repository, tmp_path / "gateway.log", "--model-control-mode", "explicit")
    try:

        def load_error() -> str:
            response = gateway.http.post("/v2/repository/models/linear/load", headers=ADMIN_HEADERS, timeout=120)
            assert response.status_code == 503, response.text
            return str(response.json()["error"])

        response = gateway.http.post("/v2/repository/models/linear/load", headers=ADMIN_HEADERS, timeout=120)
        assert response.status_code == 200, response.text
        assert "model linear version 1 warmed up: 3 request(s) on 1 instance(s)" in gateway.logs()

        version_2 = repository / "linear" / "2"
        export_keras_version(version_2, BIASES[2])
        classify = prediction_log_pb2.PredictionLog(classify_log=prediction_log_pb2.ClassifyLog())
        write_tf_serving_warmup(version_2, [predict_log(X), classify])
        assert "tf_serving_warmup_requests record 2 holds no predict_log" in load_error()
        write_tf_serving_warmup(version_2, [predict_log(X, input_name="pixels")])
        assert "record 1: missing input(s) x; unknown input(s) pixels" in load_error()
        path = write_tf_serving_warmup(version_2, [predict_log(X)])
        damaged = bytearray(path.read_bytes())
        damaged[20] ^= 0xFF  # a byte of the record, not of its length
        path.write_bytes(bytes(damaged))
        assert "record 1: its checksum does not match" in load_error()
        path.write_bytes(bytes(damaged[:-6]))
        assert "record 1 is cut short" in load_error()
        index = {entry["version"]: entry for entry in gateway.http.post("/v2/repository/index").json()}
        assert index["2"]["state"] == "UNAVAILABLE" and "tf_serving_warmup_requests" in index["2"]["reason"]
        response = gateway.http.post(
            "/v2/models/linear/infer",
            json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": X.ravel().tolist()}]},
        )
        assert response.status_code == 200 and response.json()["model_version"] == "1", response.text
    finally:
        gateway.stop()


# -- our descriptors are TF Serving's -------------------------------------------------------------------------


def _their_files() -> list[descriptor_pb2.FileDescriptorProto]:
    """Every file of protobuf's default pool that tensorflow-serving-api's and TensorFlow's messages come from."""
    from tensorflow_serving.apis import model_service_pb2, prediction_service_pb2

    seen: dict[str, descriptor_pb2.FileDescriptorProto] = {}

    def add(file: Any) -> None:
        if file.name in seen:
            return
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        seen[file.name] = proto
        for dependency in file.dependencies:
            add(dependency)

    for module in (prediction_service_pb2, model_service_pb2, model_server_config_pb2, prediction_log_pb2):
        add(module.DESCRIPTOR)
    return list(seen.values())


def test_our_descriptors_match_tensorflow_serving_apis_for_every_message_we_define() -> None:
    from protos.messages import POOL

    ours: list[descriptor_pb2.FileDescriptorProto] = []
    for name in ("tensor", "meta_graph", "example", "error_codes", "apis", "model_server_config"):
        proto = descriptor_pb2.FileDescriptorProto()
        POOL.FindFileByName(f"protos/tfserving/{name}.proto").CopyToProto(proto)
        ours.append(proto)
    checked = assert_wire_compatible(ours, _their_files(), "tensorflow-serving-api")
    # Every file was walked: 51 messages (map entries included) and the 5 RPCs served.
    assert (checked.messages, checked.methods) == (51, 5), checked


# -- the tensor codec, against TensorFlow's own TensorProtos ---------------------------------------------------


def _ours(theirs: Any) -> Any:
    """TensorFlow's TensorProto as the gateway's message (through the wire, as a request brings it)."""
    from protos.tfserving import TensorProto

    return TensorProto.FromString(theirs.SerializeToString())


@pytest.mark.parametrize("datatype", sorted(SAMPLES))
def test_tensor_codec_reads_tensorflows_protos_and_tensorflow_reads_ours(datatype: str) -> None:
    from gateway.core.types import InferTensor
    from gateway.transports.grpc.tfserving_codec import decode_tensor, encode_tensor

    sample = SAMPLES[datatype]
    # tensor_content (what tf.make_tensor_proto writes for numbers), and the typed *_val fields.
    for proto in (tf.make_tensor_proto(sample), _typed_tensor_proto(sample, datatype)):
        decoded = decode_tensor("t", _ours(proto))
        assert (decoded.datatype, decoded.shape) == (datatype, list(sample.shape))
        assert decoded.data.dtype == sample.dtype and np.array_equal(decoded.data, sample), proto
    answer = encode_tensor(InferTensor("t", datatype, list(sample.shape), sample))
    assert not answer.tensor_content  # typed values, as TF Serving answers
    back = tf.make_ndarray(type(tf.make_tensor_proto(0)).FromString(answer.SerializeToString()))
    assert back.dtype == sample.dtype and np.array_equal(back, sample)


def _typed_tensor_proto(sample: np.ndarray, datatype: str) -> Any:
    """TensorFlow's TensorProto of ``sample`` with its values in the typed field of its dtype, not tensor_content."""
    from gateway.repository.tf_tensors import VALUES_FIELD

    proto = tf.make_tensor_proto(sample)
    proto.ClearField("tensor_content")
    field = getattr(proto, VALUES_FIELD[datatype])
    del field[:]
    field.extend(sample.view(np.uint16).ravel().tolist() if datatype == "FP16" else sample.ravel().tolist())
    return proto


def test_tensor_codec_fills_with_the_last_value_and_refuses_what_tensorflow_would() -> None:
    from gateway.errors import InvalidArgumentError
    from gateway.transports.grpc.tfserving_codec import decode_tensor

    filled = tf.make_tensor_proto(7.0, dtype=tf.float32, shape=[2, 2])  # one value for four elements
    assert np.array_equal(decode_tensor("t", _ours(filled)).data, np.full((2, 2), 7.0, np.float32))
    too_many = _typed_tensor_proto(np.zeros((1, 2), np.float32), "FP32")
    too_many.float_val.append(1.0)
    bad = {
        "values": too_many,
        "dtype": tf.make_tensor_proto(np.zeros(2, np.complex64)),
        "empty": tf.make_tensor_proto(np.zeros((1, 2), np.float32)),
        "unknown rank": tf.make_tensor_proto(np.zeros(2, np.float32)),
    }
    bad["empty"].ClearField("tensor_content")
    bad["unknown rank"].tensor_shape.unknown_rank = True
    for case, proto in bad.items():
        with pytest.raises(InvalidArgumentError):
            decode_tensor(case, _ours(proto))


# -- models.config ---------------------------------------------------------------------------------------------


def test_models_config_maps_onto_the_repositorys_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.repository.tfserving_config import read_model_server_config

    config = tmp_path / "models.config"
    config.write_text(
        """
model_config_list {
  config { name: "a" base_path: "/models/a" model_platform: "tensorflow"
           model_version_policy { latest { num_versions: 2 } } }
  config { name: "b" base_path: "relative/b" model_version_policy { all {} } }
  config { name: "c" base_path: "/models/c" model_version_policy { specific { versions: 3 versions: 5 } }
           version_labels { key: "stable" value: 3 } version_labels { key: "canary" value: 5 } }
}
"""
    )
    monkeypatch.chdir(tmp_path)
    models = read_model_server_config(config)
    assert sorted(models) == ["a", "b", "c"]
    assert models["a"].path == Path("/models/a") and models["a"].config.backend == "tensorflow"
    assert models["a"].config.version_policy.select([1, 2, 3]) == [2, 3]
    assert models["b"].path == tmp_path / "relative" / "b"  # from the working directory, as TF Serving
    assert models["b"].config.backend is None and models["b"].config.version_policy.select([1, 2]) == [1, 2]
    assert models["b"].config.model_fields_set == {"version_policy"}  # only what models.config gives
    assert models["c"].config.version_policy.select([1, 3, 4, 5]) == [3, 5]
    assert models["c"].config.version_labels == {"stable": 3, "canary": 5}


@pytest.mark.parametrize(
    ("entry", "named"),
    [
        ('config { name: "a" base_path: "/m" logging_config {} }', "logging_config"),
        ('config { name: "a" base_path: "/m" model_type: TENSORFLOW }', "model_type"),
        ('config { name: "a" base_path: "gs://bucket/a" }', "object storage"),
        ('config { name: "a" base_path: "/m" model_platform: "pytorch" }', "model_platform"),
        ('config { name: "a" }', "base_path is required"),
        ('config { name: "a b" base_path: "/m" }', "not a valid model name"),
        ('config { name: "a" base_path: "/m" } config { name: "a" base_path: "/n" }', "listed twice"),
        ('config { name: "a" base_path: "/m" model_version_policy { specific {} } }', "lists no versions"),
        ('config { name: "a" base_path: "/m" version_labels { key: "2" value: 2 } }', "not a version number"),
    ],
)
def test_models_config_refuses_what_the_gateway_cannot_honour(tmp_path: Path, entry: str, named: str) -> None:
    from gateway.repository.tfserving_config import ModelServerConfigError, read_model_server_config

    config = tmp_path / "models.config"
    config.write_text(f"model_config_list {{ {entry} }}\n")
    with pytest.raises(ModelServerConfigError, match=named):
        read_model_server_config(config)


def test_configured_models_keep_their_files_and_their_settings_in_one_place(tmp_path: Path) -> None:
    """Uploads and deletes leave a models.config model's base path alone; a setting given twice is a load error."""
    import asyncio

    from gateway.errors import FailedPreconditionError, UnavailableError
    from gateway.repository.config import ModelConfig, VersionPolicy
    from gateway.repository.model_repository import ConfiguredModel, ModelRepository

    base = tmp_path / "base"
    (base / "1").mkdir(parents=True)
    (base / "config.yaml").write_text("version_policy: {all: {}}\n")
    configured = ConfiguredModel(base, ModelConfig(version_policy=VersionPolicy(all={})), "models.config")
    repository = ModelRepository(tmp_path / "repository", 8, configured_models={"m": configured})
    assert repository.model_names() == ["m"]

    async def attempt() -> None:
        with pytest.raises(FailedPreconditionError, match=r"models\.config"):
            await repository.delete("m")
        with pytest.raises(FailedPreconditionError, match=r"models\.config"):
            await repository.install_version("m", None, tmp_path)
        with pytest.raises(UnavailableError, match=r"version_policy set both in models\.config and in config\.yaml"):
            await repository.load("m")

    asyncio.run(attempt())
    assert sorted(path.name for path in base.iterdir()) == ["1", "config.yaml"]
    (tmp_path / "repository" / "m").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"both in models\.config and a folder of the model repository"):
        ModelRepository(tmp_path / "repository", 8, configured_models={"m": configured})
