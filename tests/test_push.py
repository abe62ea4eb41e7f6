"""Model intake: `gateway push` converts torch models in each accepted form, proves parity and uploads them.

Every push goes to a real gateway process over its management API (or into a local repository);
the served predictions are compared with the framework's own over the digits test split, over REST
and gRPC. Bad pushes must fail with a clear message, a non-zero exit and the right status, and leave
the repository exactly as it was.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import tritonclient.grpc as triton_grpc

import gateway
from tests.conftest import ADMIN_HEADERS, ADMIN_TOKEN, GatewayProcess, metadata, run_push, snapshot, start_gateway
from tests.torch_models import DigitsCNN, DigitsMLP, NoisyModel, TokenBag, predict, train

#: Upload limit of the push server, small enough to test 413 cheaply.
UPLOAD_LIMIT = 4_000_000


@pytest.fixture(scope="module")
def push_gateway(tmp_path_factory: pytest.TempPathFactory, digits_source: Path) -> Iterator[GatewayProcess]:
    """A gateway whose repository starts with the example digits model (config.yaml declares its input)."""
    root = tmp_path_factory.mktemp("push-repository")
    shutil.copytree(digits_source, root / "digits")
    server = start_gateway(
        root, tmp_path_factory.mktemp("push-logs") / "gateway.log", "--max-upload-bytes", str(UPLOAD_LIMIT)
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def trained(digits_split) -> dict[str, torch.nn.Module]:
    x_train, _, y_train, _ = digits_split
    return {"mlp": train(DigitsMLP(), x_train, y_train), "cnn": train(DigitsCNN(), x_train, y_train, epochs=80)}


def served_logits(server: GatewayProcess, model: str, version: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logits for ``x`` over REST (JSON) and over gRPC (tritonclient, raw contents)."""
    response = server.http.post(
        f"/v2/models/{model}/versions/{version}/infer",
        json={"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]},
    )
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    rest = np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
    client = triton_grpc.InferenceServerClient(url=server.grpc_address)
    try:
        tensor = triton_grpc.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer(model, [tensor], model_version=version)
        grpc_logits = result.as_numpy(output["name"])
    finally:
        client.close()
    return rest, grpc_logits


def assert_serves_like(server: GatewayProcess, model: str, version: str, reference: torch.nn.Module, x, y) -> None:
    """The served logits match the framework's over ``x``, sent in batches of the default max_batch_size (64)."""
    expected = predict(reference, x)
    answers = [served_logits(server, model, version, x[start : start + 64]) for start in range(0, len(x), 64)]
    rest = np.concatenate([answer[0] for answer in answers])
    grpc_logits = np.concatenate([answer[1] for answer in answers])
    for logits in (rest, grpc_logits):
        np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=1e-3)
        assert (logits.argmax(1) == expected.argmax(1)).all()
    accuracy = float((rest.argmax(1) == y).mean())
    assert accuracy > 0.9, f"{model} accuracy {accuracy}"


# ----------------------------------------------------------------------------- each accepted torch form


def test_push_exported_program_entry_point_and_torchscript(push_gateway, trained, digits_split, tmp_path):
    _, x_test, _, y_test = digits_split
    mlp, cnn = trained["mlp"], trained["cnn"]
    server = push_gateway.http_url

    # 1. An ExportedProgram file (.pt2), framework detected from the suffix.
    program = torch.export.export(mlp, (torch.from_numpy(x_test[:4]),), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
    torch.export.save(program, tmp_path / "mlp.pt2")
    pushed = run_push(str(tmp_path / "mlp.pt2"), "--name", "digits_torch", "--server", server, "--token", ADMIN_TOKEN)
    assert pushed.returncode == 0, pushed.stderr
    assert "model digits_torch version 1 is ready" in pushed.stdout
    assert "input FP32 [batch, 64]" in pushed.stdout and "output FP32 [batch, 10]" in pushed.stdout
    assert "PASS" in pushed.stdout and "curl -s " in pushed.stdout
    assert "exporting the torch model to ONNX" in pushed.stderr and "checking parity" in pushed.stderr
    assert_serves_like(push_gateway, "digits_torch", "1", mlp, x_test, y_test)
    parity = metadata(push_gateway, "digits_torch", "1")["parameters"]["parity"]
    assert parity["passed"] and parity["outputs"][0]["inputs_tried"] >= 17
    assert parity["outputs"][0]["max_abs_error"] < 1e-4

    # 2. An entry point file.py:function returning (module, example_inputs): the next version.
    torch.save(mlp.state_dict(), tmp_path / "mlp_weights.pt")
    np.save(tmp_path / "examples.npy", x_test[:3])
    (tmp_path / "entry.py").write_text(
        "import numpy as np\nimport torch\nfrom tests.torch_models import DigitsMLP\n\n"
        "def build():\n"
        "    model = DigitsMLP()\n"
        f"    model.load_state_dict(torch.load({str(tmp_path / 'mlp_weights.pt')!r}, weights_only=True))\n"
        f"    return model, (np.load({str(tmp_path / 'examples.npy')!r}),)\n"
    )
    pushed = run_push(
        f"{tmp_path / 'entry.py'}:build", "--name", "digits_torch", "--server", server, "--token", ADMIN_TOKEN
    )
    assert pushed.returncode == 0, pushed.stderr
    assert "model digits_torch version 2 is ready" in pushed.stdout
    assert_serves_like(push_gateway, "digits_torch", "2", mlp, x_test, y_test)

    # 3. TorchScript carries no shapes: --input-spec gives them.
    torch.jit.save(torch.jit.script(cnn), tmp_path / "cnn.pt")
    pushed = run_push(
        str(tmp_path / "cnn.pt"), "--name", "digits_cnn", "--version", "3", "--input-spec", "input:FP32:-1,64",
        "--server", server, "--token", ADMIN_TOKEN,
    )  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    assert_serves_like(push_gateway, "digits_cnn", "3", cnn, x_test, y_test)


def test_python_api_pushes_an_in_memory_module(push_gateway, trained, digits_split):
    _, x_test, _, y_test = digits_split
    result = gateway.push(
        trained["cnn"],
        (x_test[:5],),
        name="digits_cnn_api",
        server=push_gateway.http_url,
        token=ADMIN_TOKEN,
        verbose=False,
    )
    assert (result.name, result.version, result.ready) == ("digits_cnn_api", 1, True)
    assert result.parity is not None and result.parity.ok
    assert_serves_like(push_gateway, "digits_cnn_api", "1", trained["cnn"], x_test, y_test)


def test_two_int64_inputs_with_a_dynamic_sequence_axis(push_gateway):
    torch.manual_seed(0)
    model = TokenBag().eval()
    ids = np.random.default_rng(0).integers(0, 100, size=(2, 6))
    mask = np.ones((2, 6), dtype=np.int64)
    result = gateway.push(
        model,
        (ids, mask),
        name="token_bag",
        server=push_gateway.http_url,
        token=ADMIN_TOKEN,
        dynamic_axes={"input_ids": {1: "sequence"}, "mask": {1: "sequence"}},
        verbose=False,
    )
    assert [t.describe() for t in result.inputs] == [
        "input_ids INT64 [batch, sequence]",
        "mask INT64 [batch, sequence]",
    ]
    assert metadata(push_gateway, "token_bag", "1")["inputs"] == [
        {"name": "input_ids", "datatype": "INT64", "shape": [-1, -1]},
        {"name": "mask", "datatype": "INT64", "shape": [-1, -1]},
    ]
    rng = np.random.default_rng(1)
    for batch, length in [(1, 1), (3, 17), (8, 4), (2, 40)]:
        ids = rng.integers(0, 100, size=(batch, length))
        mask = (rng.random((batch, length)) > 0.3).astype(np.int64)
        body = {
            "inputs": [
                {"name": "input_ids", "datatype": "INT64", "shape": [batch, length], "data": ids.ravel().tolist()},
                {"name": "mask", "datatype": "INT64", "shape": [batch, length], "data": mask.ravel().tolist()},
            ]
        }
        response = push_gateway.http.post("/v2/models/token_bag/infer", json=body)
        assert response.status_code == 200, response.text
        (output,) = response.json()["outputs"]
        assert output["shape"] == [batch, 4]
        np.testing.assert_allclose(np.reshape(output["data"], (batch, 4)), predict(model, ids, mask), atol=1e-5)


def test_onnx_file_into_a_local_repository(tmp_path, digits_source):
    repository = tmp_path / "local-repository"
    source = str(digits_source / "1" / "model.onnx")
    for expected_version in (1, 2):
        pushed = run_push(source, "--name", "digits_onnx", "--repository", str(repository))
        assert pushed.returncode == 0, pushed.stderr
        assert f"model digits_onnx version {expected_version} is ready" in pushed.stdout
        assert "parity: not checked" in pushed.stdout
    assert sorted(snapshot(repository)) == ["digits_onnx/1/model.onnx", "digits_onnx/2/model.onnx"]
    assert not any((repository / ".staging").iterdir())


def test_the_token_a_local_server_wrote_is_found(tmp_path, digits_source):
    token_dir = tmp_path / "tokens"
    env = {"GATEWAY_ADMIN_TOKEN_DIR": str(token_dir)}
    server = start_gateway(tmp_path / "repository", tmp_path / "gateway.log", env=env, admin_token=None)
    try:
        token_file = token_dir / f"admin-token-{server.http_port}"
        assert token_file.stat().st_mode & 0o777 == 0o600
        assert token_dir.stat().st_mode & 0o777 == 0o700
        assert server.http.post("/v2/repository/models/x/load", headers=ADMIN_HEADERS).status_code == 401
        pushed = run_push(
            str(digits_source / "1" / "model.onnx"), "--name", "found", "--server", server.http_url, env=env
        )
        assert pushed.returncode == 0, pushed.stderr
        assert server.http.get("/v2/models/found/ready").status_code == 200
    finally:
        server.stop()
    assert not token_file.exists()  # removed when the server stops


# ----------------------------------------------------------------------------- bad pushes change nothing


def test_bad_pushes_fail_clearly_and_change_nothing(push_gateway, tmp_path, digits_source):
    server = push_gateway.http_url
    before = snapshot(push_gateway.repository)
    (tmp_path / "notes.txt").write_text("not a model")
    (tmp_path / "corrupt.onnx").write_bytes(b"\x08\x07garbage that is not a model")
    torch.jit.save(torch.jit.script(NoisyModel()), tmp_path / "noisy.pt")
    cases = {
        "unsupported file type": [str(tmp_path / "notes.txt")],
        "not a valid ONNX model": [str(tmp_path / "corrupt.onnx")],
        "parity check failed": [str(tmp_path / "noisy.pt"), "--input-spec", "input:FP32:-1,4"],
        "does not exist": [str(tmp_path / "missing.pt2")],
        "--input-spec": [str(tmp_path / "noisy.pt")],
        "invalid model name": [str(digits_source / "1" / "model.onnx"), "--name", "../escape"],
    }
    for expected, args in cases.items():
        name = [] if "--name" in args else ["--name", "bad"]
        pushed = run_push(*args, *name, "--server", server, "--token", ADMIN_TOKEN)
        assert pushed.returncode == 1, (expected, pushed.stdout, pushed.stderr)
        assert expected in pushed.stderr, (expected, pushed.stderr)
        assert "Traceback" not in pushed.stderr
    parity_failure = run_push(
        str(tmp_path / "noisy.pt"),
        "--input-spec",
        "input:FP32:-1,4",
        "--name",
        "bad",
        "--server",
        server,
        "--token",
        ADMIN_TOKEN,
    )
    assert "max_abs_error" in parity_failure.stderr and "NO" in parity_failure.stderr  # the table is shown

    wrong_token = run_push(
        str(digits_source / "1" / "model.onnx"), "--name", "bad", "--server", server, "--token", "wrong"
    )
    assert wrong_token.returncode == 1 and "(401)" in wrong_token.stderr and "invalid admin token" in wrong_token.stderr
    assert snapshot(push_gateway.repository) == before
    assert push_gateway.http.get("/v2/models/bad").status_code == 404


def make_package(members: dict[str, bytes], links: dict[str, str] | None = None, absolute: str | None = None) -> bytes:
    """A gzip tar of regular files, plus symbolic links and an absolute-path member when asked."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            archive.addfile(info)
        if absolute is not None:
            info = tarfile.TarInfo(absolute)
            info.size = 1
            archive.addfile(info, io.BytesIO(b"x"))
    return buffer.getvalue()


def test_bad_packages_get_the_right_status_and_change_nothing(push_gateway, digits_source):
    model_bytes = (digits_source / "1" / "model.onnx").read_bytes()
    token_bag_free = {"model.onnx": model_bytes}
    before = snapshot(push_gateway.repository)
    url = "/v2/repository/models/uploaded/versions/1"
    cases = [
        (make_package({"model.onnx": model_bytes, "../escape.txt": b"x"}), 400, "'..'"),
        (make_package(token_bag_free, links={"link.onnx": "/etc/passwd"}), 400, "is a link"),
        (make_package(token_bag_free, absolute="/tmp/absolute.txt"), 400, "absolute path"),
        (make_package({"model.onnx": b"\x08\x07not onnx"}), 400, "not a valid ONNX model"),
        (
            make_package({**token_bag_free, "quantization.json": b"{not json"}),
            400,
            "quantization.json is not valid JSON",
        ),
        (
            make_package({**token_bag_free, "quantization.json": b"[1, 2]"}),
            400,
            "quantization.json must hold a JSON object",
        ),
        (make_package({"notes.txt": b"no model here"}), 400, "no model artifact"),
        (b"this is not a tar archive", 400, "not a tar archive"),
        (b"", 400, "empty"),
        (os.urandom(UPLOAD_LIMIT + 1), 413, "upload limit"),
    ]
    for body, status, message in cases:
        response = push_gateway.http.put(url, content=body, headers=ADMIN_HEADERS)
        assert response.status_code == status, (message, response.text)
        assert message in response.json()["error"], (message, response.text)
    for headers in ({}, {"authorization": "Bearer nope"}):
        response = push_gateway.http.put(url, content=make_package(token_bag_free), headers=headers)
        assert response.status_code == 401
    assert snapshot(push_gateway.repository) == before

    # A version that exists already: 409, nothing replaced.
    response = push_gateway.http.put(
        "/v2/repository/models/digits/versions/1", content=make_package(token_bag_free), headers=ADMIN_HEADERS
    )
    assert response.status_code == 409 and "exists already" in response.json()["error"]
    # A version that does not fit the model's config.yaml (another input name) does not load: the
    # previous version keeps serving and the repository is untouched.
    torch.manual_seed(0)
    wrong = torch.nn.Linear(64, 10)
    gateway.push(
        wrong,
        (np.zeros((2, 64), np.float32),),
        name="mismatch",
        repository=push_gateway.repository.parent / "elsewhere",
        verbose=False,
    )
    mismatched = (push_gateway.repository.parent / "elsewhere" / "mismatch" / "1" / "model.onnx").read_bytes()
    response = push_gateway.http.put(
        "/v2/repository/models/digits/versions/2",
        content=make_package({"model.onnx": mismatched}),
        headers=ADMIN_HEADERS,
    )
    assert response.status_code == 400 and "does not load" in response.json()["error"], response.text
    assert snapshot(push_gateway.repository) == before
    assert push_gateway.http.get("/v2/models/digits").json()["versions"] == ["1"]
    assert push_gateway.http.get("/v2/models/digits/ready").status_code == 200
    httpx.get(f"{push_gateway.http_url}/v2/health/ready").raise_for_status()
