"""`gateway push` with --quantize int8, --precision fp16 and --optimize: the price measured, stored and served.

One gateway process (model control mode none, an empty repository) receives every push: a torch MLP
and a small CNN trained on the digits (from the CLI and from the Python API), a Keras CNN, a JAX MLP
and the example ONNX file, with int8 dynamic, int8 static (calibrated), fp16 and the offline
optimization. For each, the test measures the figures itself, running the served model file with
ONNX Runtime and the original model on the same inputs (the parity inputs rebuilt with
``converters.pipeline.parity_inputs``, and the held-out digits in the push's batches of 64 rows), and
compares them with ``quantization.json`` as the server shows it in the model's metadata. The served
outputs (REST and gRPC) must equal the compressed model's outputs in process. A push over its guard
must publish nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import gateway
from converters.pipeline import parity_inputs
from converters.quantization import LATENCY_RUNS
from converters.sources import source_from_object
from gateway.push_client import PushError
from tests.conftest import ADMIN_TOKEN, GatewayProcess, metadata, run_push, served, snapshot, start_gateway
from tests.torch_models import DigitsCNN, DigitsMLP, OutlierMLP, predict, train

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

#: The push's max_batch_size: the eval data runs in batches of this many rows, latency is timed at it.
MAX_BATCH = 64
Digits = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@pytest.fixture(scope="module")
def quant_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("quantized-repository")
    server = start_gateway(root, tmp_path_factory.mktemp("quantized-logs") / "gateway.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def trained(digits_split: Digits) -> dict[str, torch.nn.Module]:
    x_train, _, y_train, _ = digits_split
    return {"mlp": train(DigitsMLP(), x_train, y_train), "cnn": train(DigitsCNN(), x_train, y_train, epochs=80)}


@pytest.fixture(scope="module")
def eval_file(digits_split: Digits, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The held-out digits as --eval-data: the input array and the labels."""
    _, x_test, _, y_test = digits_split
    path = tmp_path_factory.mktemp("eval") / "digits-test.npz"
    np.savez(path, input=x_test, labels=y_test)
    return path


# ----------------------------------------------------------------------------- the test's own measurement


def in_batches(x: np.ndarray) -> list[np.ndarray]:
    return [x[start : start + MAX_BATCH] for start in range(0, len(x), MAX_BATCH)]


def run_onnx(model_file: Path, batches: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The one output of a one-input ONNX model, batch by batch, with ONNX Runtime in this process."""
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    (model_input,) = session.get_inputs()
    dtype = np.float16 if model_input.type == "tensor(float16)" else np.float32
    return [session.run(None, {model_input.name: batch.astype(dtype)})[0] for batch in batches]


def check_figures(
    stored: dict[str, Any],
    data_name: str,
    reference: Sequence[np.ndarray],
    compressed: Sequence[np.ndarray],
    labels: np.ndarray | None = None,
) -> None:
    """The stored figures of one data set equal what the test measures on the same outputs."""
    figures = next(item for item in stored["data"] if item["name"] == data_name)
    assert figures["batches"] == len(reference)
    (output,) = figures["outputs"]
    errors = np.concatenate(
        [np.abs(np.float64(1) * after - before).ravel() for before, after in zip(reference, compressed, strict=True)]
    )
    assert output["max_abs_error"] == pytest.approx(errors.max(), rel=1e-6)
    assert output["mean_abs_error"] == pytest.approx(errors.mean(), rel=1e-6)
    agreeing = np.concatenate(
        [before.argmax(1) == after.argmax(1) for before, after in zip(reference, compressed, strict=True)]
    )
    assert output["argmax_agreement"] == pytest.approx(agreeing.mean())
    if labels is None:
        assert figures["accuracy"] is None
        return
    before = float((np.concatenate(reference).argmax(1) == labels).mean())
    after = float((np.concatenate(compressed).argmax(1) == labels).mean())
    accuracy = figures["accuracy"]
    assert (accuracy["before"], accuracy["after"]) == (pytest.approx(before), pytest.approx(after))
    assert accuracy["drop_points"] == pytest.approx((before - after) * 100)


def check_latency(stored: dict[str, Any]) -> None:
    latency = stored["latency"]
    assert latency["runs"] == LATENCY_RUNS and latency["intra_op_threads"] == 1
    assert [item["batch_size"] for item in latency["batches"]] == [1, MAX_BATCH]
    assert all(item["before_ms"] > 0 and item["after_ms"] > 0 for item in latency["batches"])


def assert_served_as_in_process(
    server: GatewayProcess, model: str, version: str, input_name: str, batches: Sequence[np.ndarray]
) -> None:
    """Over REST and gRPC, the served outputs equal ONNX Runtime's on the served file, in this process."""
    model_file = server.repository / model / version / "model.onnx"
    expected = run_onnx(model_file, batches)
    (input_meta,) = metadata(server, model, version)["inputs"]
    dtype = np.float16 if input_meta["datatype"] == "FP16" else np.float32
    for batch, want in zip(batches, expected, strict=True):
        rest, grpc_outputs = served(server, model, version, {input_name: batch.astype(dtype)})
        for got in (*rest.values(), *grpc_outputs.values()):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
            assert (got.argmax(1) == want.argmax(1)).all()


def op_types(model_file: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(model_file)).graph.node}


# ----------------------------------------------------------------------------- torch


def test_cli_int8_dynamic_torch_mlp(quant_gateway, trained, digits_split, eval_file, tmp_path):
    _, x_test, _, y_test = digits_split
    mlp = trained["mlp"]
    torch.save(mlp.state_dict(), tmp_path / "mlp_weights.pt")
    np.save(tmp_path / "examples.npy", x_test[:4])
    (tmp_path / "entry.py").write_text(
        "import numpy as np\nimport torch\nfrom tests.torch_models import DigitsMLP\n\n"
        "def build():\n"
        "    model = DigitsMLP()\n"
        f"    model.load_state_dict(torch.load({str(tmp_path / 'mlp_weights.pt')!r}, weights_only=True))\n"
        f"    return model.eval(), (np.load({str(tmp_path / 'examples.npy')!r}),)\n"
    )
    pushed = run_push(
        f"{tmp_path / 'entry.py'}:build", "--name", "mlp_int8", "--quantize", "int8", "--eval-data", str(eval_file),
        "--max-accuracy-drop", "5", "--max-abs-error", "10", "--server", quant_gateway.http_url, "--token", ADMIN_TOKEN,
    )  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    assert "quantizing to int8 with ONNX Runtime (dynamic)" in pushed.stderr
    assert "PASS" in pushed.stdout and "price of the compression:" in pushed.stdout
    assert "int8 dynamic (QOperator" in pushed.stdout and "against the original torch model" in pushed.stdout
    assert "guard: accuracy drop <= 5 points, max abs error <= 10: met" in pushed.stdout
    assert pushed.stdout.index("PASS") < pushed.stdout.index("price of the compression:")

    stored = metadata(quant_gateway, "mlp_int8", "1")["parameters"]["quantization"]
    assert stored["compression"]["quantize"] == "int8" and stored["compression"]["mode"] == "dynamic"
    assert stored["compression"]["per_channel_choice"].startswith("measured")
    assert stored["reference"] == "the original torch model" and stored["guard"]["passed"]
    served_file = quant_gateway.repository / "mlp_int8" / "1" / "model.onnx"
    assert "MatMulInteger" in op_types(served_file)
    source = source_from_object(mlp, (x_test[:4],))
    source.export_onnx(tmp_path / "fp32.onnx")
    assert stored["size"] == {
        "bytes_before": (tmp_path / "fp32.onnx").stat().st_size,
        "bytes_after": served_file.stat().st_size,
    }
    assert stored["size"]["bytes_after"] < stored["size"]["bytes_before"] / 2
    inputs = [batch["input"] for batch in parity_inputs(source)]
    check_figures(stored, "parity inputs", [predict(mlp, x) for x in inputs], run_onnx(served_file, inputs))
    batches = in_batches(x_test)
    check_figures(stored, "eval data", [predict(mlp, x) for x in batches], run_onnx(served_file, batches), y_test)
    check_latency(stored)
    assert_served_as_in_process(quant_gateway, "mlp_int8", "1", "input", batches)


def test_api_int8_static_torch_cnn_calibrated_by_an_entry_point(
    quant_gateway, trained, digits_split, eval_file, tmp_path
):
    x_train, x_test, _, y_test = digits_split
    cnn = trained["cnn"]
    np.save(tmp_path / "calibration.npy", x_train[:256])
    # A dataclass with string annotations: the file must be in sys.modules while it runs, as an import.
    (tmp_path / "calibration.py").write_text(
        "from __future__ import annotations\n\nfrom dataclasses import dataclass\n\nimport numpy as np\n\n"
        "@dataclass(frozen=True)\nclass Rows:\n    path: str\n    size: int = 64\n\n"
        "def batches():\n"
        f"    rows = Rows({str(tmp_path / 'calibration.npy')!r})\n"
        "    data = np.load(rows.path)\n"
        "    for start in range(0, len(data), rows.size):\n"
        "        yield {'input': data[start : start + rows.size]}\n"
    )
    result = gateway.push(
        cnn,
        (x_test[:4],),
        name="cnn_int8",
        server=quant_gateway.http_url,
        token=ADMIN_TOKEN,
        quantize="int8",
        calibration_data=f"{tmp_path / 'calibration.py'}:batches",
        per_channel=True,
        eval_data=eval_file,
        verbose=False,
    )
    assert result.quantization is not None
    compression = result.quantization.compression
    assert (compression.mode, compression.calibration_batches, compression.per_channel) == ("static", 4, True)
    assert compression.per_channel_choice == "asked"
    assert "price of the compression:" in result.summary() and "int8 static (QDQ, per-channel" in result.summary()
    stored = metadata(quant_gateway, "cnn_int8", "1")["parameters"]["quantization"]
    assert stored == result.quantization.to_json()  # the push returns what the server shows
    served_file = quant_gateway.repository / "cnn_int8" / "1" / "model.onnx"
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= op_types(served_file)
    inputs = [batch["input"] for batch in parity_inputs(source_from_object(cnn, (x_test[:4],)))]
    check_figures(stored, "parity inputs", [predict(cnn, x) for x in inputs], run_onnx(served_file, inputs))
    batches = in_batches(x_test)
    check_figures(stored, "eval data", [predict(cnn, x) for x in batches], run_onnx(served_file, batches), y_test)
    assert stored["data"][1]["accuracy"]["after"] > 0.9
    check_latency(stored)
    assert_served_as_in_process(quant_gateway, "cnn_int8", "1", "input", batches)


def test_api_fp16_with_fp16_inputs_and_outputs(quant_gateway, trained, digits_split):
    _, x_test, _, y_test = digits_split
    mlp = trained["mlp"]
    result = gateway.push(
        mlp,
        (x_test[:4],),
        name="mlp_fp16",
        server=quant_gateway.http_url,
        token=ADMIN_TOKEN,
        precision="fp16",
        fp16_io=True,
        eval_data={"input": x_test, "labels": y_test},
        verbose=False,
    )
    assert [tensor.describe() for tensor in result.inputs] == ["input FP32 [batch, 64]"]  # what the export took
    answer = metadata(quant_gateway, "mlp_fp16", "1")
    assert [(t["datatype"], t["shape"]) for t in answer["inputs"] + answer["outputs"]] == [
        ("FP16", [-1, 64]),
        ("FP16", [-1, 10]),
    ]
    stored = answer["parameters"]["quantization"]
    assert stored["compression"]["precision"] == "fp16" and stored["compression"]["fp16_io"] is True
    served_file = quant_gateway.repository / "mlp_fp16" / "1" / "model.onnx"
    batches = in_batches(x_test)
    check_figures(stored, "eval data", [predict(mlp, x) for x in batches], run_onnx(served_file, batches), y_test)
    assert stored["data"][1]["outputs"][0]["max_abs_error"] < 0.05
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        # No fp16 CPU kernels for Gemm here: ONNX Runtime ran it in fp32, and the push says so.
        assert "Gemm" in stored["fp32_operators"]
        assert "note: fp16 targets the CUDA provider" in result.summary()
    assert_served_as_in_process(quant_gateway, "mlp_fp16", "1", "input", batches)


# ----------------------------------------------------------------------------- Keras, JAX, ONNX files


def test_api_fp16_keras_cnn(quant_gateway, digits_split):
    pytest.importorskip("tf2onnx")
    from tests.framework_models import keras_logits, train_keras_cnn

    x_train, x_test, y_train, y_test = digits_split
    model = train_keras_cnn(x_train, y_train)
    gateway.push(
        model,
        (x_test[:4],),
        name="keras_fp16",
        server=quant_gateway.http_url,
        token=ADMIN_TOKEN,
        precision="fp16",
        eval_data={"pixels": x_test, "labels": y_test},
        verbose=False,
    )
    answer = metadata(quant_gateway, "keras_fp16", "1")
    assert [t["datatype"] for t in answer["inputs"] + answer["outputs"]] == ["FP32", "FP32"]  # kept
    stored = answer["parameters"]["quantization"]
    assert stored["reference"] == "the original keras model"
    served_file = quant_gateway.repository / "keras_fp16" / "1" / "model.onnx"
    weights = [init for init in onnx.load(str(served_file)).graph.initializer if len(init.dims) > 1]
    assert weights and all(init.data_type == onnx.TensorProto.FLOAT16 for init in weights)
    assert stored["size"]["bytes_after"] == served_file.stat().st_size < stored["size"]["bytes_before"]
    batches = in_batches(x_test)
    reference = [keras_logits(model, x) for x in batches]
    check_figures(stored, "eval data", reference, run_onnx(served_file, batches), y_test)
    assert_served_as_in_process(quant_gateway, "keras_fp16", "1", "pixels", batches)


def test_api_int8_optimized_jax_mlp(quant_gateway, digits_split, eval_file):
    pytest.importorskip("jax2onnx")
    from tests.framework_models import mlp_logits, train_jax_mlp

    x_train, x_test, y_train, y_test = digits_split
    params = train_jax_mlp(x_train, y_train)

    def classify(pixels: Any) -> Any:
        return mlp_logits(params, pixels)

    gateway.push(
        classify,
        (x_test[:4],),
        name="jax_int8",
        server=quant_gateway.http_url,
        token=ADMIN_TOKEN,
        quantize="int8",
        optimize=True,
        eval_data={"pixels": x_test, "labels": y_test},
        verbose=False,
    )
    stored = metadata(quant_gateway, "jax_int8", "1")["parameters"]["quantization"]
    assert stored["compression"]["optimized"] and stored["compression"]["mode"] == "dynamic"
    served_file = quant_gateway.repository / "jax_int8" / "1" / "model.onnx"
    assert "DynamicQuantizeMatMul" in op_types(served_file)  # ONNX Runtime's fusion, saved offline
    assert stored["size"]["bytes_after"] < stored["size"]["bytes_before"] / 2
    batches = in_batches(x_test)
    reference = [np.asarray(mlp_logits(params, x)) for x in batches]
    check_figures(stored, "eval data", reference, run_onnx(served_file, batches), y_test)
    assert_served_as_in_process(quant_gateway, "jax_int8", "1", "pixels", batches)


def test_cli_int8_static_onnx_file(quant_gateway, digits_source, digits_split, eval_file, tmp_path):
    x_train, x_test, _, y_test = digits_split
    np.savez(tmp_path / "calibration.npz", input=x_train[:300])
    original = digits_source / "1" / "model.onnx"
    pushed = run_push(
        str(original), "--name", "onnx_int8", "--quantize", "int8", "--calibration-data", str(tmp_path / "calibration.npz"),
        "--per-tensor", "--eval-data", str(eval_file), "--server", quant_gateway.http_url, "--token", ADMIN_TOKEN,
    )  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    assert "parity: not checked" in pushed.stdout and "5 calibration batches" in pushed.stdout
    stored = metadata(quant_gateway, "onnx_int8", "1")["parameters"]["quantization"]
    assert stored["reference"] == "the fp32 ONNX model (ONNX Runtime)"
    assert stored["size"]["bytes_before"] == original.stat().st_size
    served_file = quant_gateway.repository / "onnx_int8" / "1" / "model.onnx"
    batches = in_batches(x_test)
    check_figures(stored, "eval data", run_onnx(original, batches), run_onnx(served_file, batches), y_test)
    assert stored["data"][0]["batches"] == 17
    assert_served_as_in_process(quant_gateway, "onnx_int8", "1", "input", batches)


# ----------------------------------------------------------------------------- the guard and bad options


def test_a_push_over_its_guard_publishes_nothing(quant_gateway, trained, digits_split, eval_file, digits_source):
    _, x_test, _, _ = digits_split
    before = snapshot(quant_gateway.repository)
    outlier = OutlierMLP(trained["mlp"]).eval()
    np.testing.assert_allclose(predict(outlier, x_test), predict(trained["mlp"], x_test), atol=1e-4)
    with pytest.raises(PushError) as refused:
        gateway.push(
            outlier,
            (x_test[:4],),
            name="outlier_int8",
            server=quant_gateway.http_url,
            token=ADMIN_TOKEN,
            quantize="int8",
            eval_data=eval_file,
            max_accuracy_drop=1.0,
            verbose=False,
        )
    message = str(refused.value)
    assert message.startswith("nothing was pushed: the compressed model does not meet the guard")
    assert "on the eval data" in message and "is over --max-accuracy-drop 1 by" in message
    assert "the error comes mostly from these operator types (each compressed alone): MatMul (" in message
    assert "accuracy" in message.split("MatMul (")[1].split(")")[0]

    pushed = run_push(
        str(digits_source / "1" / "model.onnx"), "--name", "tight_int8", "--quantize", "int8",
        "--max-abs-error", "1e-6", "--server", quant_gateway.http_url, "--token", ADMIN_TOKEN,
    )  # fmt: skip
    assert pushed.returncode == 1
    assert "error: nothing was pushed" in pushed.stderr and "is over --max-abs-error 1e-06 by" in pushed.stderr
    assert "the error comes mostly from these operator types" in pushed.stderr and "Traceback" not in pushed.stderr
    assert snapshot(quant_gateway.repository) == before
    for name in ("outlier_int8", "tight_int8"):
        assert quant_gateway.http.get(f"/v2/models/{name}").status_code == 404


def test_options_that_do_not_fit_fail_before_converting(quant_gateway, trained, digits_split, digits_source, tmp_path):
    _, x_test, _, y_test = digits_split
    before = snapshot(quant_gateway.repository)
    pushed = run_push(
        str(digits_source / "1" / "model.onnx"), "--name", "early", "--quantize", "int8", "--max-accuracy-drop", "1",
        "--server", quant_gateway.http_url, "--token", ADMIN_TOKEN,
    )  # fmt: skip
    assert pushed.returncode == 1 and "--max-accuracy-drop needs labelled data" in pushed.stderr
    assert "loading" not in pushed.stderr  # refused before the model was even loaded

    def push(**options: Any) -> Callable[[], Any]:
        return lambda: gateway.push(
            trained["mlp"], (x_test[:4],), name="bad", server=quant_gateway.http_url, token=ADMIN_TOKEN,
            verbose=False, **options,
        )  # fmt: skip

    refused_options = {
        "are alternatives": {"quantize": "int8", "precision": "fp16"},
        "--calibration-data and --per-channel/--per-tensor apply to --quantize int8": {"per_channel": True},
        "measure a compressed model": {"eval_data": {"input": x_test}},
        "--fp16-io applies to --precision fp16": {"fp16_io": True},
        "--max-abs-error must be a number >= 0": {"quantize": "int8", "max_abs_error": -1.0},
        "the only quantization is int8": {"quantize": "int4"},
    }
    for message, options in refused_options.items():
        with pytest.raises(ValueError, match=message):
            push(**options)()
    np.savez(tmp_path / "misnamed.npz", pixels=x_test)
    refused_data = {
        "leave out --format native": {"quantize": "int8", "export_format": "native"},
        "missing ['input'], not inputs ['pixels']": {"quantize": "int8", "calibration_data": tmp_path / "misnamed.npz"},
        "one integer class index per row": {"optimize": True, "eval_data": {"input": x_test, "labels": y_test[:5]}},
        "has shape [360]": {"quantize": "int8", "eval_data": {"input": x_test[:, 0]}},
    }
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        refused_data["--optimize with --precision fp16 needs the CUDA provider"] = {
            "precision": "fp16",
            "optimize": True,
        }
    for message, options in refused_data.items():
        with pytest.raises(PushError, match=message.replace("[", r"\[").replace("]", r"\]")):
            push(**options)()
    with pytest.raises(PushError, match="found no operator to quantize among the model's Relu"):
        gateway.push(
            torch.nn.ReLU(), (x_test[:4],), name="bad", repository=tmp_path / "repository", quantize="int8",
            verbose=False,
        )  # fmt: skip
    assert snapshot(quant_gateway.repository) == before
